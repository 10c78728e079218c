"""``wdr-pipe run CONFIG.toml``: the TOML file that describes the whole workflow, read and checked.

Keys are the flags of the commands, dashes as underscores; the schema of the file
(``schema.py``) is generated from the commands' settings and configs, and every key and
value is checked against it before anything is planned. Paths are relative to the TOML
file's folder.

    store = "store"                       # the store folder
    runs = "runs"                         # run folders go to runs/<name>
    workers = 4                           # dask worker processes of the data stages (or scheduler = ADDRESS)

    [fetch]                               # wdr-pipe fetch
    indexes = ["data/train.json", "data/validation.json", "data/test.json"]
    label_map = "data/label_map.csv"
    size = 160

    [features]                            # wdr-pipe features
    hog_size = 128

    [stats]                               # wdr-pipe stats

    [train.deep_fixed]                    # one table per run: wdr-pipe train flags
    pretrained = true
    deep = "fixed"

    [train.wdr]
    init = "deep_fixed"                   # another run of this file: the paper's two phases
    parts = "deep,wide,recurrent"

Every value is checked by the schema when the file is read, and by the stage's own config
class when the plan is made (``--dry-run`` too), before anything runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ..errors import BadSetting, UserError
from ..pipeline.runner import Cluster
from ..pipeline.settings import FeatureSettings, FetchSettings, StatsSettings
from .schema import check_file, line_of, place, tables

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PATHS = {"train": ("weights",), "predict": ("out", "probs")}  # model-side keys that are paths


@dataclass(frozen=True)
class WorkflowConfig:
    """The checked content of a ``run`` TOML file (paths absolute); ``text`` is the file, for the
    line numbers of later messages."""

    path: Path
    text: str
    store: Path
    runs: Path
    cluster: Cluster = Cluster()
    fetch: Optional[FetchSettings] = None
    features: Optional[FeatureSettings] = None
    stats: StatsSettings = StatsSettings()
    train: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    evaluate: Optional[Dict[str, Any]] = None        # evaluate every run and ensemble with these settings
    ensemble: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    predict: Optional[Dict[str, Any]] = None
    report: Optional[Dict[str, Any]] = None

    def run_order(self) -> List[str]:
        """Training runs in dependency order (``init`` names another run of the file)."""
        order: List[str] = []

        def visit(name: str, stack: List[str]) -> None:
            if name in order:
                return
            if name in stack:
                raise UserError(f"{self.place(f'train.{name}', 'init')} init makes a cycle: "
                                f"{' -> '.join(stack + [name])}")
            init = self.train[name].get("init")
            if init in self.train:
                visit(init, stack + [name])
            order.append(name)

        for name in self.train:
            visit(name, [])
        return order

    def place(self, table: str = "", key: str = "") -> str:
        """``FILE:LINE: [table]``: where a message about ``key`` of ``table`` points."""
        return place(self.path, self.text, table, key)

    @contextlib.contextmanager
    def checking(self, table: str) -> Iterator[None]:
        """Around making a stage's config from ``[table]``: its refusal, one line naming the file and line."""
        try:
            yield
        except BadSetting as e:
            raise UserError(f"{self.place(table, e.field)}: {e}") from None
        except UserError as e:
            raise UserError(f"{self.place(table)}: {e}") from None
        except TypeError as e:  # a key the config does not take (the schema checks names; this is a safety net)
            raise UserError(f"{self.place(table)}: {e}") from None


def _read(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
        return text, tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass a run config (see 'wdr-pipe run --help')") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None


def _paths(doc: Dict[str, Any], base: Path) -> Dict[str, Any]:
    """``doc`` with every path key made absolute against ``base`` (the file's folder)."""
    def absolute(value):
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return str((base / Path(value).expanduser()).resolve())

    def fix(block: Dict[str, Any], keys) -> Dict[str, Any]:
        return {k: absolute(v) if k in keys else v for k, v in block.items()}

    out = {"runs": "runs", **doc}
    for name, table in tables().items():
        keys = {k for k, spec in table.keys.items()
                if (spec.setting is not None and spec.setting.path) or k in PATHS.get(name, ())}
        if not name:
            out = fix(out, keys)
        elif name in out:
            out[name] = ({run: fix(block, keys) for run, block in out[name].items()} if table.named
                         else fix(out[name], keys))
    return out


def _check_references(path: Path, text: str, doc: Dict[str, Any]) -> None:
    """Names of other runs: ensemble members, the run to predict with and to report on."""
    train, ensembles = doc.get("train", {}), doc.get("ensemble", {})
    for name in ensembles:
        if name in train:
            raise UserError(f"{place(path, text, f'ensemble.{name}')}: give it a name no [train.NAME] has")
        runs = ensembles[name]["runs"]
        unknown = [r for r in runs if r not in train]
        if len(runs) < 2 or unknown:
            raise UserError(f"{place(path, text, f'ensemble.{name}', 'runs')} runs = {runs}: name two or more "
                            f"[train.NAME] runs of this file" + (f" ({', '.join(unknown)} is none)" if unknown else ""))
    for name in ("predict", "report"):
        target = doc.get(name, {}).get("run")
        if name in doc and target not in set(train) | set(ensembles):
            raise UserError(f"{place(path, text, name, 'run')} run = {target!r}: name a [train.NAME] or "
                            "[ensemble.NAME] of this file")


def _settings(path: Path, text: str, cls, table: str, values: Dict[str, Any]):
    """``cls(**values)``, its refusal pointing at the key's line."""
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except BadSetting as e:
        raise UserError(f"{place(path, text, table, e.field)} {e}") from None


def load_config(path) -> WorkflowConfig:
    """Read ``path`` and check it whole: keys, types and values (``schema.py``), paths, run names."""
    path = Path(path)
    text, doc = _read(path)
    check_file(path, text, doc)
    _check_references(path, text, doc)
    doc = _paths(doc, path.resolve().parent)
    train = doc.get("train", {})
    for flags in train.values():  # init: another run of this file, or a run folder
        if "init" in flags and flags["init"] not in train:
            flags["init"] = str((path.resolve().parent / Path(flags["init"]).expanduser()).resolve())
    top = {k: doc[k] for k in ("workers", "scheduler") if k in doc}
    cfg = WorkflowConfig(
        path=path, text=text, store=Path(doc["store"]), runs=Path(doc["runs"]),
        cluster=_settings(path, text, Cluster, "", top),
        fetch=_settings(path, text, FetchSettings, "fetch", doc["fetch"]) if "fetch" in doc else None,
        features=_settings(path, text, FeatureSettings, "features", doc["features"]) if "features" in doc else None,
        stats=_settings(path, text, StatsSettings, "stats", doc.get("stats", {})),
        train=train, evaluate=doc.get("evaluate"), ensemble=doc.get("ensemble", {}), predict=doc.get("predict"),
        report=doc.get("report"))
    cfg.run_order()
    return cfg


def with_cluster(cfg: WorkflowConfig, cluster: Cluster) -> WorkflowConfig:
    """``cfg`` with the data stages run on ``cluster`` instead."""
    return dataclasses.replace(cfg, cluster=cluster)


__all__ = ["WorkflowConfig", "line_of", "load_config", "with_cluster"]
