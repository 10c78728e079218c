"""What guards a training run, called from the loop (``loop.py``) one line each.

- ``run_guard``: the run folder is an output of its own (not in a store or
  another run folder: ``runs.outputs``), and one process trains it at a time: an
  OS file lock on ``RUN/.lock`` (``cache.lock``; the kernel drops it when the
  process ends, killed or not), so a second ``train`` on the same ``--out`` is
  one line naming the first one's pid. A resume's recorded changes are written
  to ``config.json`` under that lock.
- ``resume_settings``: ``train --resume RUN`` continues the run with its own
  settings; an option given with it that differs from them is refused, naming
  it, except ``--lr`` (``RESUME_CHANGES``): a documented change, recorded in
  ``config.json`` (``changes``: setting, from, to, at which step), shown in
  ``metrics.jsonl``'s ``lr`` column and in the result, and what the divergence
  advice names (``diverged``).
- ``watch_loss``: a training loss ``GROWTH`` times the first step's (two orders of
  magnitude) is a warning, logged once, kept in the checkpoint (``Counters.watch``)
  and written into the result (``annotate``) with what to do.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from ...cache.lock import FileLock
from ...errors import UserError
from ...result import StageResult
from ..runs.checkpoint import Counters, saved_step
from ..runs.folder import RunFolder
from ..runs.outputs import check_run_out
from .config import TrainConfig, flag, settings_diff

log = logging.getLogger("wdr_pipe")

RESUME_CHANGES = ("lr", "head_lr", "loader_workers")  # what `train --resume RUN` may change (in config.json)
GROWTH = 100.0            # a loss this many times the first step's is a warning


# -- one process per run folder --------------------------------------------------------------------
@contextlib.contextmanager
def run_guard(cfg: TrainConfig, dist, changes: Optional[Dict[str, Tuple[Any, Any]]] = None) -> Iterator[None]:
    """Around a whole training run: rank 0 holds the run folder's lock (its refusal is every rank's error)
    and records ``changes`` of a resume; a folder that this run created and left empty is removed."""
    root = check_run_out(cfg.out) if dist.main else Path(cfg.out)
    lock = FileLock(RunFolder(root).lock, "wdr-pipe train", "wait for it to finish, or stop it; each run needs "
                                                              "its own --out")
    created = dist.main and not root.exists()

    def take():
        lock.acquire()
        if changes:
            record_changes(RunFolder(root), changes)

    try:
        dist.on_main(take, "lock the run folder")
        yield
    finally:
        lock.release()
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # nothing was written: as if never asked


# -- train --resume RUN [--lr X] -------------------------------------------------------------------
def resume_settings(run: RunFolder, given: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Tuple[Any, Any]]]:
    """The settings to continue ``run`` with and the changes to record, from the options given with
    ``--resume`` (``given``: only those on the command line); a ``UserError`` naming every other one
    that differs from the run's."""
    given = dict(given)
    out = given.pop("out", None)
    problems = []
    if out is not None and Path(os.path.abspath(os.path.expanduser(str(out)))) != run.root:
        problems.append(f"--out {out} (the run is {run.root})")
    mine = TrainConfig.from_dict({**run.settings, "out": str(run.root)}).settings()
    theirs = TrainConfig.from_dict({**run.settings, **given, "out": str(run.root)}).settings()
    changed = [k for k in theirs if settings_diff({k: mine[k]}, {k: theirs[k]})]
    problems += [settings_diff({k: mine[k]}, {k: theirs[k]})[0] for k in changed if k not in RESUME_CHANGES]
    if problems:
        raise UserError(f"--resume {run.root}: continues the run with its own settings, and these options differ "
                        f"from them: {'; '.join(problems)}; drop them (a resume may change "
                        f"{', '.join(flag(k) for k in RESUME_CHANGES)} alone), or start a new run with another --out")
    changes = {k: (mine[k], theirs[k]) for k in changed}
    if changes and run.finished:
        raise UserError(f"--resume {run.root}: the run is finished, so there is nothing to continue with "
                        f"{', '.join(flag(k) for k in changes)}; train a new run with another --out")
    return {**mine, **{k: new for k, (_, new) in changes.items()}}, changes


def record_changes(run: RunFolder, changes: Dict[str, Tuple[Any, Any]]) -> None:
    """``config.json`` with the new values of ``changes`` and a ``changes`` entry each (at the step the
    run resumes from)."""
    doc = dict(run.doc)
    step = saved_step(run.last)
    doc["settings"] = {**doc["settings"], **{k: new for k, (_, new) in changes.items()}}
    doc["changes"] = list(doc.get("changes", [])) + [
        {"setting": k, "from": old, "to": new, "at_step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        for k, (old, new) in changes.items()]
    doc["key"] = TrainConfig.from_dict({**doc["settings"], "out": str(run.root)}).key()
    run.write_config({k: v for k, v in doc.items() if k != "kind"})
    log.info("%s: resumed at step %d with %s", run.root, step,
             ", ".join(f"{flag(k)} {new} (was {old})" for k, (old, new) in changes.items()))


# -- the loss watch and the divergence advice ---------------------------------------------------------
def watch_loss(c: Counters, loss: float, rate: Tuple[str, float]) -> None:
    """Record the step's training loss; warn once when it is ``GROWTH`` times the first step's (``rate``: the
    flag that sets the phase's rate and its value, ``recipe.rate_flag``)."""
    w = c.watch
    if "first" not in w:
        w.update(first=loss, first_step=c.step)
    if loss > w.get("max", float("-inf")):  # (a resume at another rate keeps only the first loss)
        w.update(max=loss, max_step=c.step)
    if "warned_at" not in w and loss > GROWTH * max(w["first"], 1e-6):
        w.update(warned_at=c.step, flag=rate[0], lr=rate[1])
        log.warning("the training loss grew from %.3g (step %d) to %.3g (step %d): it is diverging at %s %g",
                    w["first"], w["first_step"], loss, c.step, *rate)


def loss_warning(c: Counters, run: RunFolder) -> Optional[str]:
    w = c.watch
    if "warned_at" not in w:
        return None
    name = w.get("flag", "--lr")
    return (f"the training loss grew {w['max'] / max(w['first'], 1e-6):.2g} times, from {w['first']:.3g} (step "
            f"{w['first_step']}) to {w['max']:.3g} (step {w['max_step']}): the run diverged at {name} {w['lr']:g}; "
            f"train again into a new --out with a lower {name} (e.g. {w['lr'] / 10:g})")


def annotate(result: StageResult, run: RunFolder, c: Counters) -> StageResult:
    """The result with what the guards saw: the run's recorded changes and a loss warning (details and lines)."""
    changes = run.doc.get("changes") or []
    if changes:
        result.details["changes"] = changes
        result.summary.append("changed on resume: " + "; ".join(
            f"{flag(ch['setting'])} {ch['from']} -> {ch['to']} at step {ch['at_step']}" for ch in changes))
    warning = loss_warning(c, run)
    if warning:
        result.details["loss_warning"] = warning
        result.summary.append(f"warning: {warning}")
    return result


def diverged(step: int, rate: Tuple[str, float], run: RunFolder, last_saved: int, what: str) -> UserError:
    """The one line of a run stopped by a NaN or inf: what is kept, and the one command that continues it
    (``rate``: the flag that sets the phase's rate and its value, ``recipe.rate_flag``)."""
    name, lr = rate
    kept = (f"the last good checkpoint (step {last_saved}) is kept in {run.last}" if run.last.exists()
            else "no checkpoint had been written yet")
    return UserError(f"training diverged at step {step}: {what} at {name} {lr:g}; {kept}; continue at a lower "
                     f"rate with 'wdr-pipe train --resume {run.root} {name} {lr / 10:g}'")


__all__ = ["GROWTH", "RESUME_CHANGES", "annotate", "diverged", "loss_warning", "record_changes", "resume_settings",
           "run_guard", "watch_loss"]
