"""A run folder opened for evaluation and prediction: a training run or an ensemble of runs.

Both kinds have ``RUN/config.json`` (``kind``, ``labels`` with the label ids in
column order, the store they were made from) and ``RUN/thresholds.json``; a
training run has checkpoints, an ensemble (``ensemble.py``) its members and,
for ``stack``, its fitted stacker. What evaluation writes goes under
``RUN/eval/<split>/`` (``evalfiles.py``).

Every check a user can fail is here, before anything is computed or written:
not a run folder, no checkpoint, a store whose label space differs from the
run's, a split the store does not have or (for evaluation) without labels.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..cache import Store, fetch_settings, has_labels, image_rows, label_space
from ..errors import UserError
from .checkpoint import KIND as KIND_TRAIN
from .checkpoint import RunDir

log = logging.getLogger("wdr_pipe")

KIND_ENSEMBLE = "wdr-pipe ensemble run"
CHECKPOINTS = ("best", "last")
TTA = ("none", "flip")


def _span(ids: np.ndarray) -> str:
    ids = np.asarray(ids)
    return "none" if ids.size == 0 else f"ids {int(ids.min())}..{int(ids.max())}"


class Run:
    """One opened run folder (``open_run``): its ``config.json`` and the paths around it."""

    def __init__(self, root: Path, doc: Dict[str, Any]):
        self.dir = RunDir(root)
        self.root = self.dir.root
        self.doc = doc

    @property
    def kind(self) -> str:
        return "ensemble" if self.doc.get("kind") == KIND_ENSEMBLE else "train"

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

    def eval_dir(self, split: str) -> Path:
        return self.root / "eval" / split

    def checkpoint_path(self, which: str = "best") -> Path:
        """``checkpoints/best.pt`` or ``last.pt``; a ``UserError`` that names the fix when it is missing."""
        if which not in CHECKPOINTS:
            raise UserError(f"--checkpoint {which}: use one of {', '.join(CHECKPOINTS)}")
        if self.kind == "ensemble":
            raise UserError(f"{self.root}: an ensemble has no checkpoint of its own; its members' checkpoints "
                            "were fixed when it was made ('wdr-pipe ensemble ... --checkpoint')")
        path = self.dir.best if which == "best" else self.dir.last
        if path.exists():
            return path
        other = "last" if which == "best" else "best"
        other_path = self.dir.last if which == "best" else self.dir.best
        fix = (f"pass --checkpoint {other} ({other_path.name} exists)" if other_path.exists() else
               f"train it first ('wdr-pipe train --resume {self.root}')")
        raise UserError(f"{self.root}: no checkpoint {path.relative_to(self.root)} (the run has not saved one); {fix}")

    def thresholds(self) -> Tuple[np.ndarray, str]:
        """The per-label thresholds of ``thresholds.json`` in column order and ``"tuned"``; 0.5 for
        every label and a note when the run has none (it stopped before the end)."""
        from .thresholds import load_thresholds

        if self.dir.thresholds.exists():
            return load_thresholds(self.dir.thresholds, self.label_ids).thresholds, "tuned"
        log.warning("%s: no thresholds.json (the run did not finish); using 0.5 for every label", self.root)
        return np.full(len(self.label_ids), 0.5), "0.5 (the run has no thresholds.json)"

    def result(self) -> Dict[str, Any]:
        try:
            return json.loads(self.dir.result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


def open_run(path, flag: str = "--run") -> Run:
    """The run folder at ``path``; a ``UserError`` when it is not one."""
    root = Path(path).expanduser().resolve()
    fix = "pass the --out folder of 'wdr-pipe train' or 'wdr-pipe ensemble'"
    if not root.is_dir():
        raise UserError(f"{flag} {path}: no such folder; {fix}")
    try:
        doc = json.loads(RunDir(root).config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    if not isinstance(doc, dict) or doc.get("kind") not in (KIND_TRAIN, KIND_ENSEMBLE):
        raise UserError(f"{flag} {root}: not a wdr-pipe run folder (no config.json of a run); {fix}")
    return Run(root, doc)


def check_split(store: Store, split: str, labelled: bool = False) -> None:
    """The split has committed images (and, with ``labelled``, labels)."""
    if not store.image_shards(split):
        have = store.image_splits()
        raise UserError(f"--split {split}: the store {store.root} has no committed images of that split "
                        f"(it has: {', '.join(have) or 'none'}); pick one of those or fetch it first")
    if labelled and not has_labels(store, split):
        raise UserError(f"--split {split}: an unlabelled split (no image has labels), so there is nothing to "
                        f"score against; evaluate a labelled split, or use 'wdr-pipe predict --split {split}'")


def store_columns(run: Run, store: Store, required: bool = True) -> Optional[np.ndarray]:
    """Positions of the run's label ids in the store's label space; a ``UserError`` when the spaces
    differ. A store with no label space at all (no label map, no labels: test images only) gets
    ``None`` unless ``required``."""
    space = label_space(store)
    ids = run.label_ids
    if space.size == 0 and not required:
        return None
    pos = np.searchsorted(space, ids)
    same = (space.size == run.space_size and bool((pos < space.size).all())
            and bool((space[np.minimum(pos, max(space.size - 1, 0))] == ids).all()) if space.size else False)
    if not same:
        raise UserError(f"--store {store.root}: its label space ({space.size} labels, {_span(space)}) differs from "
                        f"the run's ({run.space_size} labels, {_span(ids)}); use a store indexed with the same "
                        "labels and label map as the run's training store")
    return pos


def check_features(run: Run, store: Store) -> None:
    """A run with the wide part needs its feature config in the store."""
    key = run.feature_key
    if key and key not in store.feature_keys():
        raise UserError(f"--store {store.root}: the run {run.root} uses the wide part on feature config {key}, which "
                        f"this store does not have (it has: {', '.join(store.feature_keys()) or 'none'}); run "
                        f"'wdr-pipe features --store {store.root}' with the training store's feature settings")


def check_inputs(run: Run, store: Store, split: str, labelled: bool = False) -> Optional[np.ndarray]:
    """Every check of a (run, store, split) before a model is loaded: the split, the label space and
    the wide features (of each member, for an ensemble); the run's label columns in the store."""
    check_split(store, split, labelled)
    columns = store_columns(run, store, required=labelled)
    members = [open_run(m["path"], flag=f"{run.root}: member") for m in run.doc["members"]] \
        if run.kind == "ensemble" else [run]
    for member in members:
        check_features(member, store)
    return columns


def fallback_labels(run: Run, store: Optional[Store]) -> np.ndarray:
    """The labels given to an image the model could not see (a failed download): the k most frequent
    training labels, k chosen so that giving that set to every image has the best expected micro-F1
    under the training frequencies: ``2 sum_top-k p / (k + sum_all p)``, ``p`` = positives / images."""
    counts = run.train_positives.astype(np.float64)
    n = image_rows(store, run.train_split) if store is not None and store.image_shards(run.train_split) else 0
    if not n:  # the training split is not in this store: its size from the run's own counts
        res = run.result()
        epochs = max(1, int(res.get("details", {}).get("epochs", 1) or 1))
        n = int(res.get("counts", {}).get("samples", 0)) // epochs or int(run.doc.get("train_images", 0))
    p = counts / max(n, int(counts.max(initial=0)), 1)
    order = np.argsort(-p, kind="stable")
    f1 = 2 * np.cumsum(p[order]) / (np.arange(1, p.size + 1) + p.sum())
    k = int(np.argmax(f1)) + 1 if p.sum() > 0 else 0
    return np.sort(run.label_ids[order[:k]])


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """The fetch settings a new photo is resized with (``wdr_pipe.imaging.process``); the
    defaults are ``wdr-pipe fetch``'s."""

    size: int = 320
    resize_mode: str = "shorter"
    quality: int = 95
    min_size: int = 32
    max_pixels: int = 80_000_000


def image_spec(run: Run, store: Optional[Store]) -> Tuple[ImageSpec, str]:
    """The image settings of the run's training split in ``store`` and where they came from."""
    doc = fetch_settings(store, run.train_split) if store is not None else None
    if doc is None:
        log.warning("no fetch settings of split %s found; new images are resized with fetch's defaults",
                    run.train_split)
        return ImageSpec(), "fetch defaults"
    names = {f.name for f in dataclasses.fields(ImageSpec)}
    return ImageSpec(**{k: v for k, v in doc.items() if k in names}), f"{store.root} ({run.train_split})"


__all__ = ["CHECKPOINTS", "ImageSpec", "KIND_ENSEMBLE", "KIND_TRAIN", "Run", "TTA", "check_features", "check_inputs", "check_split",
           "fallback_labels", "image_spec", "open_run", "store_columns"]
