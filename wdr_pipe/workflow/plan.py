"""The steps of a ``run`` config in dependency order, and their execution.

Every step calls a stage of the library, which decides by its own keys
whether there is work to do (``run`` adds no cache of its own): a finished
step costs a footer read. ``force`` redoes a step and every step after it that
depends on it; ``dry_run`` only lists the plan.

Under torchrun (``wdr.dist.Dist``) rank 0 alone runs every step but the training
ones and the other ranks wait for its outcome; a training step runs on every
rank (DDP), after its ``prepare`` (setting a forced run's folder aside) has
run once on rank 0.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from ..checks import default_of
from ..errors import UserError
from ..progress import Hook
from ..result import StageResult
from ..wdr.dist import Dist
from .config import WorkflowConfig

log = logging.getLogger("wdr_pipe")


@dataclass
class Step:
    name: str                     # "fetch", "features", "stats", "train.NAME", "ensemble.NAME", "evaluate.NAME", ...
    deps: List[str]
    action: Callable[[Hook, bool], StageResult]  # (progress hook, force) -> result
    what: str = ""                             # one line for --dry-run
    key: Optional[str] = None                  # the output's config key, where known before running
    every_rank: bool = False                   # under torchrun: run on every rank (training), not rank 0 alone
    prepare: Optional[Callable[[bool], None]] = None  # (force) -> None, once on rank 0 before the action


@dataclass
class Outcome:
    step: Step
    result: Optional[StageResult] = None
    seconds: float = 0.0
    forced: bool = False

    @property
    def status(self) -> str:
        if self.result is None:
            return "planned"
        return "ran" if self.result.ran else "reused"


@dataclass
class Plan:
    config: WorkflowConfig
    evaluation_split: str                      # the split every run is evaluated (and reported, compared) on
    steps: List[Step] = field(default_factory=list)

    def names(self) -> List[str]:
        return [s.name for s in self.steps]

    def lines(self) -> List[str]:
        """The plan for a person (``run --dry-run``): a step a line, with what it waits for."""
        return [f"{s.name:<22} {s.what}" + (f"  (after {', '.join(s.deps)})" if s.deps else "") for s in self.steps]

    def dependants(self, names: Sequence[str]) -> List[str]:
        """``names`` and every step that depends on them, directly or not, in plan order."""
        out = set(names)
        for s in self.steps:
            if any(d in out for d in s.deps):
                out.add(s.name)
        return [n for n in self.names() if n in out]


def _fetch_step(cfg: WorkflowConfig) -> Step:
    settings = cfg.fetch
    with cfg.checking("fetch"):
        image, _ = settings.configs()

    def action(progress: Hook, force: bool) -> StageResult:
        result = settings.run(cfg.store, cfg.cluster, progress=progress)
        settings.verdict(result)
        return result

    return Step("fetch", [], action, f"fetch {len(settings.indexes)} index(es) into {cfg.store} ({image.size} px)")


def _features_step(cfg: WorkflowConfig, deps: List[str]) -> Step:
    from ..pipeline.settings import FeatureSettings

    settings = cfg.features or FeatureSettings()
    with cfg.checking("features"):
        fc = settings.config()

    def action(progress: Hook, force: bool) -> StageResult:
        return settings.run(cfg.store, cfg.cluster, progress=progress, rebuild=force)

    return Step("features", deps, action, f"features {fc.key} (HOG {fc.hog_size} px, {fc.bins} colour bins)",
                key=fc.key)


def _stats_step(cfg: WorkflowConfig, deps: List[str]) -> Step:
    with cfg.checking("stats"):
        cfg.stats.config()
    return Step("stats", deps, lambda progress, force: cfg.stats.run(cfg.store, progress=progress, rebuild=force),
                "label statistics of every labelled split")


def _train_step(cfg: WorkflowConfig, name: str, deps: List[str], feature_key: Optional[str]) -> Step:
    from ..wdr.train.config import TrainConfig
    from ..wdr.train.loop import train
    from ..wdr.train.recipe import phases

    flags = dict(cfg.train[name])
    if feature_key and "wide" in str(flags.get("parts", "")):
        flags.setdefault("feature_key", feature_key)  # the features this file computes
    if flags.get("init") in cfg.train:
        flags["init"] = str(cfg.runs / flags["init"])
    with cfg.checking(f"train.{name}"):
        tc = TrainConfig.from_dict({"store": str(cfg.store), "out": str(cfg.runs / name), **flags})

    def prepare(force: bool) -> None:
        if force:
            _set_aside(tc.out)

    def action(progress: Hook, force: bool) -> StageResult:
        return train(tc, progress=progress)

    return Step(f"train.{name}", deps, action,
                f"train {name}: {tc.backbone}, parts {','.join(tc.parts)}, " + (
                    f"deep {tc.deep}, {tc.epochs} epochs" if tc.recipe == "single" else
                    f"recipe {tc.recipe} ({' then '.join(p.name for p in phases(tc))})"),
                every_rank=True, prepare=prepare)


def _set_aside(folder: str) -> None:
    """A forced step's old output folder is renamed beside it, never deleted."""
    if os.path.isdir(folder):
        aside = f"{folder}.before-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(folder, aside)
        log.info("forced: the previous %s is kept in %s", folder, aside)


def _evaluate_step(cfg: WorkflowConfig, name: str, deps: List[str]) -> Step:
    from ..wdr.score.evaluate import EvalConfig, evaluate

    with cfg.checking("evaluate"):
        ec = EvalConfig(store=str(cfg.store), run=str(cfg.runs / name), **(cfg.evaluate or {}))
    return Step(f"evaluate.{name}", deps, lambda progress, force: evaluate(ec, progress=progress),
                f"evaluate {name} on {ec.split}")


def _ensemble_step(cfg: WorkflowConfig, name: str) -> Step:
    from ..wdr.score.ensemble import EnsembleConfig, make_ensemble

    flags = dict(cfg.ensemble[name])
    members = flags.pop("runs")
    with cfg.checking(f"ensemble.{name}"):
        ec = EnsembleConfig(runs=tuple(str(cfg.runs / r) for r in members), out=str(cfg.runs / name),
                            store=str(cfg.store), **flags)

    def action(progress: Hook, force: bool) -> StageResult:
        if force:
            _set_aside(ec.out)
        return make_ensemble(ec, progress=progress)

    return Step(f"ensemble.{name}", [f"train.{r}" for r in members], action,
                f"ensemble {name}: {ec.method} of {', '.join(members)}")


def _producer(cfg: WorkflowConfig, name: str) -> str:
    return f"ensemble.{name}" if name in cfg.ensemble else f"train.{name}"


def _predict_step(cfg: WorkflowConfig) -> Step:
    from ..wdr.runs.outputs import check_outputs
    from ..wdr.score.predict import PredictConfig, predict_split

    flags = dict(cfg.predict)
    name = flags.pop("run")
    with cfg.checking("predict"):
        pc = PredictConfig(store=str(cfg.store), run=str(cfg.runs / name), **flags)
        # at plan time: no output in the store or a run folder, even one this file has not made yet
        check_outputs({"out": pc.out, "probs": pc.probs},
                      reserved=[(cfg.store, "the store of this run file"),
                                *[(cfg.runs / n, "the run folder") for n in [*cfg.train, *cfg.ensemble]]])
    return Step("predict", [_producer(cfg, name)], lambda progress, force: predict_split(pc, progress=progress),
                f"predict {pc.split} with {name} -> {pc.out}")


def _report_step(cfg: WorkflowConfig, split: str, deps: List[str]) -> Step:
    from ..report import build_report

    name, split = cfg.report["run"], cfg.report.get("split") or split
    return Step("report", deps, lambda progress, force: build_report(str(cfg.runs / name), split, str(cfg.store)),
                f"report of {name} on {split}")


def evaluation_split(cfg: WorkflowConfig) -> str:
    """The split of ``[evaluate]``, else evaluation's own default."""
    from ..wdr.score.evaluate import EvalConfig

    return (cfg.evaluate or {}).get("split", default_of(EvalConfig, "split"))


def make_plan(cfg: WorkflowConfig) -> Plan:
    """Every step of ``cfg``, its settings checked by the stage's own config classes."""
    plan = Plan(cfg, evaluation_split(cfg))
    data: List[str] = []
    if cfg.fetch is not None:
        plan.steps.append(_fetch_step(cfg))
        data.append("fetch")
    needs_features = cfg.features is not None or any("wide" in str(f.get("parts", "")) for f in cfg.train.values())
    feature_key = None
    if needs_features:
        plan.steps.append(_features_step(cfg, list(data)))
        feature_key = plan.steps[-1].key
    plan.steps.append(_stats_step(cfg, list(data)))
    after_data = [s.name for s in plan.steps]
    for name in cfg.run_order():
        init = cfg.train[name].get("init")
        plan.steps.append(_train_step(cfg, name, after_data + ([f"train.{init}"] if init in cfg.train else []),
                                      feature_key))
    for name in cfg.ensemble:
        plan.steps.append(_ensemble_step(cfg, name))
    if cfg.evaluate is not None:
        for name in [*cfg.run_order(), *cfg.ensemble]:
            plan.steps.append(_evaluate_step(cfg, name, [_producer(cfg, name)]))
    if cfg.predict is not None:
        plan.steps.append(_predict_step(cfg))
    if cfg.report is not None:
        target = cfg.report["run"]
        deps = [f"evaluate.{target}"] if cfg.evaluate is not None else [_producer(cfg, target)]
        plan.steps.append(_report_step(cfg, plan.evaluation_split, deps))
    return plan


def outcome_lines(outcomes: Sequence[Outcome]) -> List[str]:
    """What ``run`` prints when done: a step a line, its status (``*``: forced), time and result line."""
    return [f"{'step':<22}{'status':<8}{'seconds':>9}  result"] + [
        f"{o.step.name:<22}{o.status + ('*' if o.forced else ''):<8}{o.seconds:>9.1f}  {o.result.line()}"
        for o in outcomes]


def run_folders(cfg: WorkflowConfig) -> List[str]:
    """The run and ensemble folders of ``cfg`` that exist, in plan order (for ``compare``)."""
    from ..cache import result_path

    return [str(cfg.runs / n) for n in [*cfg.run_order(), *cfg.ensemble] if result_path(cfg.runs / n).exists()]


def execute(plan: Plan, force: Sequence[str] = (), progress_for: Callable[[str], Hook] = lambda name: None,
            ranks: Optional[Dist] = None) -> List[Outcome]:
    """Run the steps in order; ``force``: step names (or a prefix such as ``train``) to redo.

    ``ranks`` (started) under torchrun: rank 0 runs the steps that are not ``every_rank``, the other
    ranks get its results (or raise its error: a ``UserError``, else ``StepFailed``); every rank returns the
    same outcomes."""
    ranks = ranks or Dist({})
    names = plan.names()
    chosen = [n for n in names for f in force if n == f or n.startswith(f + ".")]
    unknown = [f for f in force if not any(n == f or n.startswith(f + ".") for n in names)]
    if unknown:
        raise UserError(f"--force {unknown[0]}: no such step; the plan has: {', '.join(names)}")
    forced = set(plan.dependants(chosen))
    outcomes = []
    for step in plan.steps:
        t0, redo = time.monotonic(), step.name in forced
        if step.prepare is not None:
            ranks.on_main(lambda: step.prepare(redo), step.name)
        if step.every_rank:
            result = step.action(progress_for(step.name), redo)
        else:
            result = ranks.on_main(lambda: step.action(progress_for(step.name), redo), step.name)
        outcomes.append(Outcome(step, result, time.monotonic() - t0, redo))
        if ranks.main:
            log.info("%s: %s in %.1f s", step.name, "ran" if result.ran else "reused", outcomes[-1].seconds)
    return outcomes


__all__ = ["Outcome", "Plan", "Step", "evaluation_split", "execute", "make_plan", "outcome_lines",
           "run_folders"]
