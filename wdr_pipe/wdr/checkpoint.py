"""The run folder of ``wdr-pipe train``, and checkpoints as plain dicts written atomically.

Layout::

    RUN/config.json            every setting, the store's identity, feature key, label ids,
                               backbone + weights digest, data config (written before step 1)
    RUN/checkpoints/last.pt    the latest checkpoint (every --checkpoint-every steps and each epoch end)
    RUN/checkpoints/best.pt    the checkpoint with the best validation micro-F1 so far
    RUN/metrics.jsonl          one JSON line per evaluation: step, epoch, loss, lr, images/s, val_*
    RUN/thresholds.json        per-label decision thresholds, tuned on the validation split
    RUN/result.json            StageResult.to_dict(); written last: its presence means "finished"
    RUN/tb/                    TensorBoard event files (only when tensorboard is installed)

A checkpoint is a plain dict (as nanoGPT's): ``model``, ``optimizer``,
``scheduler``, ``ema`` (state dicts or None), ``loader`` (the train loader's
``state_dict()``), ``rng`` (one entry per rank: python, numpy, torch, cuda),
``step``, ``epoch``, ``best`` (validation micro-F1), ``best_step``,
``samples``, ``settings`` and ``world_size``. Saved with ``torch.save`` to a
temporary file, fsynced, renamed: a killed run never leaves half a file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..cache.atomic import atomic_path, remove_stale_tmp, write_text_atomic
from ..cache import Store
from ..errors import UserError
from ..result import StageResult
from .trainconfig import TrainConfig, settings_diff

log = logging.getLogger("wdr_pipe")
KIND = "wdr-pipe train run"


class RunDir:
    """Paths of one run folder (touches the disk only when asked)."""

    def __init__(self, root):
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.metrics = self.root / "metrics.jsonl"
        self.thresholds = self.root / "thresholds.json"
        self.result = self.root / "result.json"
        self.tb = self.root / "tb"

    def is_run(self) -> bool:
        if not self.config.exists():
            return False
        try:
            return read_json(self.config).get("kind") == KIND
        except UserError:
            return False

    @property
    def finished(self) -> bool:
        return self.result.exists()

    def state(self) -> str:
        """``"new"`` (missing or empty folder), ``"finished"`` or ``"unfinished"``; a UserError otherwise."""
        if not self.root.exists():
            return "new"
        if not self.root.is_dir():
            raise UserError(f"{self.root}: is a file, not a run folder; pass a new folder to --out")
        if self.is_run():
            return "finished" if self.finished else "unfinished"
        if any(p.name != "checkpoints" or any(p.iterdir()) for p in self.root.iterdir()):
            raise UserError(f"{self.root}: not a wdr-pipe run folder (no config.json of a run) and not empty; "
                            "pass a new or empty folder to --out")
        return "new"

    def settings(self) -> Dict[str, Any]:
        return read_json(self.config)["settings"]

    def check_settings(self, cfg: TrainConfig) -> None:
        """A UserError naming every setting of ``cfg`` that differs from the run's."""
        diff = settings_diff(self.settings(), cfg.settings())
        if diff:
            raise UserError(f"{self.root}: a run with other settings: {'; '.join(diff)}; "
                            "pass the run's settings to continue it, or a new --out for a new run")

    def check_store(self, identity: Dict[str, Any]) -> None:
        """A UserError if the store's committed shards changed since the run started."""
        was = read_json(self.config)["store"]
        if was.get("fingerprint") != identity["fingerprint"]:
            raise UserError(f"{self.root}: the store {identity['path']} changed since this run started "
                            f"(committed shards {was.get('fingerprint')} -> {identity['fingerprint']}); "
                            "start a new run with another --out")

    # -- files ---------------------------------------------------------------------------
    def write_config(self, doc: Dict[str, Any]) -> None:
        write_json(self.config, {"kind": KIND, **doc})

    def append_metrics(self, row: Dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()

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

    def write_result(self, result: StageResult) -> None:
        write_json(self.result, result.to_dict())

    def read_result(self) -> StageResult:
        return StageResult.from_dict(read_json(self.result))

    def clean(self) -> None:
        """Remove temporary files a killed run left behind."""
        remove_stale_tmp(self.root)
        remove_stale_tmp(self.checkpoints)


# -- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(path: Path, ckpt: Dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename."""
    with atomic_path(Path(path)) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no checkpoint; the run has not saved one yet")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a checkpoint from elsewhere, or a damaged file
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); "
                        "delete it to restart from the previous one, or start a new run") from e


def eval_weights(ckpt: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights a checkpoint was validated with: the EMA's when the run kept one."""
    return ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]


def rng_state() -> Dict[str, Any]:
    """Every random generator this process draws from: python, numpy, torch, cuda."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_digest(state: Dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# -- the store's identity ----------------------------------------------------------------
def store_identity(store: Store, splits: List[str], feature_key: Optional[str]) -> Dict[str, Any]:
    """The store's path and a fingerprint of what a run reads: the committed image shards of
    ``splits`` (``Store.fingerprint``) and the feature key (feature shards follow from both)."""
    prints = {split: store.fingerprint(split, feature_key) for split in splits}
    h = hashlib.sha256(json.dumps(prints, sort_keys=True).encode())
    return {"path": str(store.root), "fingerprint": h.hexdigest()[:16],
            "shards": {split: len(store.image_shards(split)) for split in splits}}


# -- json --------------------------------------------------------------------------------
def read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); restore it or start a new run") from e


def write_json(path: Path, doc: Dict[str, Any]) -> None:
    write_text_atomic(Path(path), json.dumps(doc, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(v):
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


__all__ = ["KIND", "RunDir", "eval_weights", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state",
           "state_digest", "store_identity"]
