"""A run folder: what ``wdr-pipe train`` or ``wdr-pipe ensemble`` wrote, as one object (``RunFolder``).

Layout::

    RUN/config.json            kind, every setting, the store's identity, feature key, label ids,
                               backbone + its pretrained weights' digest, data config (written first)
    RUN/checkpoints/last.safetensors  a training run's latest checkpoint (``checkpoint.py``)
    RUN/checkpoints/best.safetensors  the checkpoint with the best validation micro-F1 so far
    RUN/metrics.jsonl          one JSON line per validation: step, epoch, loss, lr, images/s, val_*
    RUN/thresholds.json        per-label decision thresholds, tuned on the validation split
    RUN/stacker.safetensors    an ensemble's fitted stacker (--method stack), and
    RUN/stack_oof.parquet      its out-of-fold probabilities on the fit split
    RUN/eval/<split>/          what evaluate writes (``evalfiles.py``)
    RUN/tb/                    TensorBoard event files (only when tensorboard is installed)
    RUN/result.json            StageResult.to_dict(); written last: its presence means "finished"
    RUN/.lock                  the OS file lock a training process holds (``train/guards.py``)

A folder that still holds the pickled checkpoints (``checkpoints/*.pt``) or the
``stacker.npz`` of an earlier wdr-pipe is refused by every command with the one
conversion command (``convert.py``): nothing is ever unpickled.

``open_run(path)`` opens a folder of either kind, checked; ``RunFolder(path)``
alone touches the disk only when asked. Every JSON file goes through
``cache.jsonfile``; ``result.json`` is read in one way, ``read_result``
(which also reads the files of earlier versions).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...cache import Store
from ...cache.atomic import remove_stale_tmp, write_text_atomic
from ...cache.jsonfile import read_json, write_json
from ...cache.tensorfile import read_tree, write_tree
from ...errors import DiskFull, UserError
from ...result import StageResult
from .checkpoint import SUFFIX, convert_command
from .evalfiles import EvalFolder

log = logging.getLogger("wdr_pipe")

KINDS = {"train": "wdr-pipe train run", "ensemble": "wdr-pipe ensemble run"}  # config.json's "kind"
CHECKPOINTS = ("best", "last")
LOCK = ".lock"
STACKER_KEYS = ("coef", "intercept", "fitted")  # an ensemble's stacker: (L, M), (L,), (L,) bool
FIX = "restore it, or train the run again"
# result.json keys of earlier versions -> today's (read_result); "weights_digest" meant the last trained tensors
RENAMED_DETAILS = {"weights_digest": "final_weights_digest"}


class RunFolder:
    """Paths, documents and checks of one run folder."""

    def __init__(self, root):
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / f"last{SUFFIX}"
        self.best = self.checkpoints / f"best{SUFFIX}"
        self.metrics = self.root / "metrics.jsonl"
        self.thresholds = self.root / "thresholds.json"
        self.stacker = self.root / f"stacker{SUFFIX}"
        self.stack_oof = self.root / "stack_oof.parquet"
        self.tb = self.root / "tb"
        self.result = self.root / "result.json"
        self.lock = self.root / LOCK
        self._doc: Optional[Dict[str, Any]] = None

    # -- config.json ------------------------------------------------------------------------
    @property
    def doc(self) -> Dict[str, Any]:
        """``config.json`` (read once)."""
        if self._doc is None:
            self._doc = read_json(self.config, FIX)
        return self._doc

    def is_run(self) -> bool:
        """``config.json`` names a run of either kind (never raises)."""
        if not self.config.exists():
            return False
        try:
            return self.doc.get("kind") in KINDS.values()
        except UserError:
            return False

    @property
    def kind(self) -> str:
        return "ensemble" if self.doc.get("kind") == KINDS["ensemble"] else "train"

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def label_ids(self) -> np.ndarray:
        return np.asarray(self.doc["labels"]["ids"], dtype=np.int64)

    @property
    def space_size(self) -> int:
        return int(self.doc["labels"]["of"])

    @property
    def train_positives(self) -> np.ndarray:
        return np.asarray(self.doc["labels"]["train_positives"], dtype=np.int64)

    @property
    def feature_key(self) -> Optional[str]:
        return self.doc.get("feature_key")

    @property
    def store_path(self) -> str:
        return self.doc["store"]["path"]

    @property
    def settings(self) -> Dict[str, Any]:
        return self.doc.get("settings", {})

    @property
    def train_split(self) -> str:
        return self.settings.get("train_split", "train")

    def pickles(self) -> List[Path]:
        """Files of an earlier wdr-pipe that were pickles (``checkpoints/*.pt``, ``stacker.npz``)."""
        found = sorted(self.checkpoints.glob("*.pt")) if self.checkpoints.is_dir() else []
        return found + [p for p in (self.root / "stacker.npz",) if p.exists()]

    def check_format(self) -> None:
        """A ``UserError`` for a folder that still holds pickles of an earlier wdr-pipe: one line with the
        conversion command, never a load."""
        old = self.pickles()
        if old:
            names = ", ".join(str(p.relative_to(self.root)) for p in old)
            raise UserError(f"{self.root}: {names} in the pickle format of an earlier wdr-pipe, which is never "
                            f"loaded because unpickling can run code; if you trust this run, convert it with "
                            f"'{convert_command(self.root)}' (the conversion trusts the files)")

    def write_config(self, doc: Dict[str, Any], kind: str = "train") -> None:
        write_json(self.config, {"kind": KINDS[kind], **doc})
        self._doc = None

    def check_store(self, identity: Dict[str, Any]) -> None:
        """A UserError if the store's committed shards changed since the run started."""
        was = self.doc["store"]
        if was.get("fingerprint") != identity["fingerprint"]:
            raise UserError(f"{self.root}: the store {identity['path']} changed since this run started "
                            f"(committed shards {was.get('fingerprint')} -> {identity['fingerprint']}); "
                            "start a new run with another --out")

    # -- a training run's state -------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.result.exists()

    def state(self) -> str:
        """``"new"`` (missing or empty folder), ``"finished"`` or ``"unfinished"``; a UserError otherwise."""
        if not self.root.exists():
            return "new"
        if not self.root.is_dir():
            raise UserError(f"{self.root}: is a file, not a run folder; pass a new folder to --out")
        if self.is_run() and self.kind == "train":
            self.check_format()
            return "finished" if self.finished else "unfinished"
        if any(p.name not in ("checkpoints", LOCK) or (p.is_dir() and any(p.iterdir()))
               for p in self.root.iterdir()):
            raise UserError(f"{self.root}: not a wdr-pipe run folder (no config.json of a run) and not empty; "
                            "pass a new or empty folder to --out")
        return "new"

    def clean(self) -> None:
        """Remove temporary files a killed run left behind."""
        remove_stale_tmp(self.root)
        remove_stale_tmp(self.checkpoints)

    def checkpoint(self, which: str = "best") -> Path:
        """``checkpoints/best.safetensors`` or ``last.safetensors`` to score with; a ``UserError`` naming the fix."""
        if which not in CHECKPOINTS:
            raise UserError(f"--checkpoint {which}: use one of {', '.join(CHECKPOINTS)}")
        if self.kind == "ensemble":
            raise UserError(f"{self.root}: an ensemble has no checkpoint of its own; its members' checkpoints "
                            "were fixed when it was made ('wdr-pipe ensemble ... --checkpoint')")
        path, other = (self.best, self.last) if which == "best" else (self.last, self.best)
        if path.exists():
            return path
        fix = (f"pass --checkpoint {'last' if which == 'best' else 'best'} ({other.name} exists)" if other.exists()
               else f"train it first ('wdr-pipe train --resume {self.root}')")
        raise UserError(f"{self.root}: no checkpoint {path.relative_to(self.root)} (the run has not saved one); {fix}")

    def best_else_last(self, flag: str) -> Path:
        """The checkpoint other runs start from (``train --init``, ``embed --run``): best, else last."""
        path = self.best if self.best.exists() else self.last
        if not path.exists():
            raise UserError(f"{flag} {self.root}: the run has no checkpoint yet; let it train for an epoch first")
        return path

    # -- stacker.safetensors ----------------------------------------------------------------
    def write_stacker(self, stacker: Dict[str, np.ndarray]) -> None:
        write_tree(self.stacker, {k: np.asarray(stacker[k]) for k in STACKER_KEYS}, "stacker")

    def read_stacker(self) -> Dict[str, np.ndarray]:
        """The stack's per-label models, read as numbers (never unpickled)."""
        tree = read_tree(self.stacker, "stacker", "make the ensemble again ('wdr-pipe ensemble ... --out NEW')")
        return {k: np.asarray(tree[k]) for k in STACKER_KEYS}

    # -- metrics.jsonl ----------------------------------------------------------------------
    def append_metrics(self, row: Dict[str, Any]) -> None:
        try:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"{self.metrics}: no space left on device; free some space and run the same "
                               "command again (it resumes from the last checkpoint)") from None
            raise

    def read_metrics(self) -> List[Dict[str, Any]]:
        if not self.metrics.exists():
            return []
        rows = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a kill
                break
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Keep the rows up to ``step`` (a resumed run logs the later ones again)."""
        rows = [r for r in self.read_metrics() if r["step"] <= step]
        write_text_atomic(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    # -- result.json and thresholds.json ------------------------------------------------------
    def write_result(self, result: StageResult) -> None:
        write_json(self.result, result.to_dict())

    def read_result(self) -> StageResult:
        """The run's ``StageResult`` (details of earlier versions under today's names)."""
        result = StageResult.from_dict(read_json(self.result, FIX))
        for old, new in RENAMED_DETAILS.items():
            if old in result.details and new not in result.details:
                result.details[new] = result.details.pop(old)
        return result

    def result_if_finished(self) -> Optional[StageResult]:
        return self.read_result() if self.finished else None

    def read_thresholds(self) -> Tuple[np.ndarray, str]:
        """The per-label thresholds in column order and ``"tuned"``; 0.5 for every label and a note when the
        run has none (it stopped before the end)."""
        from ..metrics.thresholds import load_thresholds

        if self.thresholds.exists():
            return load_thresholds(self.thresholds, self.label_ids).thresholds, "tuned"
        log.warning("%s: no thresholds.json (the run did not finish); using 0.5 for every label", self.root)
        return np.full(len(self.label_ids), 0.5), "0.5 (the run has no thresholds.json)"

    def evaluation(self, split: str) -> EvalFolder:
        """``RUN/eval/<split>/``."""
        return EvalFolder(self.root / "eval" / split)


def open_run(path, flag: str = "--run", kinds: Sequence[str] = ("train", "ensemble")) -> RunFolder:
    """The run folder at ``path``, of one of ``kinds``; a ``UserError`` naming ``flag`` and the fix."""
    what = " or ".join(f"'wdr-pipe {k}'" for k in kinds)
    fix = f"pass the --out folder of {'an earlier ' if len(kinds) == 1 else ''}{what}"
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{flag} {path}: not a wdr-pipe run folder; {fix}")
    run = RunFolder(root)
    if not run.is_run():
        raise UserError(f"{flag} {root}: not a wdr-pipe run folder (no config.json of a run); {fix}")
    if run.kind not in kinds:
        raise UserError(f"{flag} {root}: the folder of 'wdr-pipe {run.kind}'; {fix}")
    run.check_format()
    return run


def store_identity(store: Store, splits: List[str], feature_key: Optional[str]) -> Dict[str, Any]:
    """The store's path and a fingerprint of what a run reads: the committed image shards of
    ``splits`` (``Store.fingerprint``) and the feature key (feature shards follow from both)."""
    prints = {split: store.fingerprint(split, feature_key) for split in splits}
    h = hashlib.sha256(json.dumps(prints, sort_keys=True).encode())
    return {"path": str(store.root), "fingerprint": h.hexdigest()[:16],
            "shards": {split: len(store.image_shards(split)) for split in splits}}


__all__ = ["CHECKPOINTS", "KINDS", "LOCK", "STACKER_KEYS", "RunFolder", "open_run", "store_identity"]
