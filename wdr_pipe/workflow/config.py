"""``wdr-pipe run CONFIG.toml``: the TOML file that describes the whole DAG, read and checked.

Keys are the flags of the commands, dashes as underscores; an unknown key is
an error naming its line. Paths are relative to the TOML file's folder.

    store = "store"                       # the store folder
    runs = "runs"                         # run folders go to runs/<name>

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

Every value is checked by the stage's own config class when the plan is made,
before anything runs.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FETCH_KEYS = {"indexes", "split", "label_map", "holdout", "size", "resize_mode", "quality", "min_size", "shard_size",
              "threads", "per_host", "timeout", "deadline", "retries", "max_bytes", "limit", "retry_failed"}
FEATURE_KEYS = {"hog_size", "orientations", "bins", "keep_background", "dtype", "splits"}
STATS_KEYS = {"dim", "alpha", "epochs", "seed", "pos_weight_clip", "splits"}
TOP_KEYS = {"store", "runs", "workers", "scheduler", "fetch", "features", "stats", "train", "evaluate", "ensemble",
            "predict", "report"}
EVALUATE_KEYS = {"split", "checkpoint", "tta", "saliency", "saliency_labels", "batch_size"}
ENSEMBLE_KEYS = {"runs", "method", "split", "folds", "seed", "C", "min_positives", "checkpoint", "tta", "batch_size"}
PREDICT_KEYS = {"run", "split", "out", "probs", "checkpoint", "tta", "batch_size"}
REPORT_KEYS = {"run", "split"}
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def train_keys() -> set:
    from ..wdr.train.config import setting_names

    return setting_names(aliases=True) - {"store", "out"}


@dataclass
class RunConfig:
    """The checked content of a ``run`` TOML file (paths absolute)."""

    path: Path
    store: Path
    runs: Path
    workers: Optional[int] = None
    scheduler: Optional[str] = None
    fetch: Optional[Dict[str, Any]] = None
    features: Optional[Dict[str, Any]] = None
    stats: Optional[Dict[str, Any]] = None
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
                raise UserError(f"{self.path}: [train.{name}] init makes a cycle: {' -> '.join(stack + [name])}")
            init = self.train[name].get("init")
            if init in self.train:
                visit(init, stack + [name])
            order.append(name)

        for name in self.train:
            visit(name, [])
        return order


def _line_of(text: str, key: str, table: str = "") -> int:
    """The first line that sets ``key`` (after the table header ``[table]`` if given), 1-based."""
    start = 0
    if table:
        m = re.search(rf"^\s*\[{re.escape(table)}\]\s*$", text, re.M)
        start = m.end() if m else 0
    m = re.search(rf"^\s*{re.escape(key)}\s*=", text[start:], re.M)
    if not m:
        m = re.search(rf"^\s*\[(?:[\w.]*\.)?{re.escape(key)}\]", text, re.M)
        start = 0 if m else start
    return text.count("\n", 0, start + m.start()) + 1 if m else 0


def _check_keys(path: Path, text: str, table: str, got: Dict[str, Any], allowed: set) -> None:
    for key in got:
        if key not in allowed:
            line = _line_of(text, key, table)
            where = f"[{table}] " if table else ""
            raise UserError(f"{path}:{line}: unknown key {where}{key!r}; use one of: {', '.join(sorted(allowed))}")


def _abs(base: Path, value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{path}: {key} must be a path (text), not {value!r}")
    return str((base / Path(value).expanduser()).resolve())


def load_config(path) -> RunConfig:
    """Read and check ``path`` (keys and types of the file itself; values are checked by the stages)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass a run config (see 'wdr-pipe run --help')") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    base = path.resolve().parent
    _check_keys(path, text, "", doc, TOP_KEYS)
    for name, keys in (("fetch", FETCH_KEYS), ("features", FEATURE_KEYS), ("stats", STATS_KEYS),
                       ("evaluate", EVALUATE_KEYS), ("predict", PREDICT_KEYS), ("report", REPORT_KEYS)):
        if name in doc and not isinstance(doc[name], dict):
            raise UserError(f"{path}:{_line_of(text, name)}: {name} must be a table [{name}]")
        _check_keys(path, text, name, doc.get(name, {}), keys)
    if "store" not in doc:
        raise UserError(f"{path}: no 'store = \"FOLDER\"' line; say where the store is (or goes)")
    train = doc.get("train", {})
    if not isinstance(train, dict) or any(not isinstance(v, dict) for v in train.values()):
        raise UserError(f"{path}: training runs are tables [train.NAME] of train flags")
    allowed = train_keys()
    for name, flags in train.items():
        if not RUN_NAME.match(name):
            raise UserError(f"{path}: [train.{name}]: a run name is letters, digits, '_', '.' or '-'")
        _check_keys(path, text, f"train.{name}", flags, allowed)
    ensembles = doc.get("ensemble", {})
    if not isinstance(ensembles, dict) or any(not isinstance(v, dict) for v in ensembles.values()):
        raise UserError(f"{path}: ensembles are tables [ensemble.NAME] with runs = [\"run\", ...]")
    for name, flags in ensembles.items():
        if not RUN_NAME.match(name) or name in train:
            raise UserError(f"{path}: [ensemble.{name}]: give it a name of letters, digits, '_', '.' or '-' "
                            "that no [train.NAME] has")
        _check_keys(path, text, f"ensemble.{name}", flags, ENSEMBLE_KEYS)
        unknown = [r for r in flags.get("runs", []) if r not in train]
        if len(flags.get("runs", [])) < 2 or unknown:
            raise UserError(f"{path}: [ensemble.{name}] runs = {flags.get('runs')}: name two or more [train.NAME] "
                            f"runs of this file" + (f" ({', '.join(map(str, unknown))} is none)" if unknown else ""))
    for name in ("predict", "report"):
        target = doc.get(name, {}).get("run")
        if name in doc and target not in set(train) | set(ensembles):
            raise UserError(f"{path}: [{name}] run = {target!r}: name a [train.NAME] or [ensemble.NAME] of this file")
    predict = dict(doc["predict"]) if "predict" in doc else None
    if predict is not None:
        for key in ("out", "probs"):
            if key in predict:
                predict[key] = _abs(base, predict[key], f"[predict] {key}", path)
        if "out" not in predict:
            raise UserError(f"{path}: [predict] needs out = \"submission.csv\"")
    fetch = dict(doc["fetch"]) if "fetch" in doc else None
    if fetch is not None:
        if not fetch.get("indexes"):
            raise UserError(f"{path}: [fetch] needs indexes = [\"train.json\", ...]")
        fetch["indexes"] = [_abs(base, p, "[fetch] indexes", path) for p in fetch["indexes"]]
        if "label_map" in fetch:
            fetch["label_map"] = _abs(base, fetch["label_map"], "[fetch] label_map", path)
    runs = {name: dict(flags) for name, flags in train.items()}
    for name, flags in runs.items():
        for key in ("weights",):
            if key in flags:
                flags[key] = _abs(base, flags[key], f"[train.{name}] {key}", path)
    cfg = RunConfig(path=path, store=Path(_abs(base, doc["store"], "store", path)),
                    runs=Path(_abs(base, doc.get("runs", "runs"), "runs", path)), workers=doc.get("workers"),
                    scheduler=doc.get("scheduler"), fetch=fetch, features=doc.get("features"),
                    stats=doc.get("stats"), train=runs, evaluate=doc.get("evaluate"), ensemble=ensembles,
                    predict=predict, report=doc.get("report"))
    for name, flags in runs.items():  # init: another run of this file, or a run folder
        init = flags.get("init")
        if init is not None and init not in runs:
            flags["init"] = _abs(base, init, f"[train.{name}] init", path)
    cfg.run_order()
    return cfg
