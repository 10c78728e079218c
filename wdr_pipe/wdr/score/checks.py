"""Every check of a (run, store, split) before a model is loaded, and what a run needs of a store.

Every check a user can fail is here, before anything is computed or written:
a split the store does not have or (for evaluation) without labels, a store
whose label space differs from the run's, a wide part without its feature
config. Also: the labels given to images the model could not see
(``fallback_labels``) and the fetch settings new photos are resized with
(``image_spec``: the training split's ``FetchConfig``).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import numpy as np

from ...cache import Store, fetch_settings, has_labels, image_rows, label_space
from ...errors import UserError
from ...pipeline.configs import FetchConfig
from ..runs.folder import RunFolder, open_run

log = logging.getLogger("wdr_pipe")


def _span(ids: np.ndarray) -> str:
    ids = np.asarray(ids)
    return "none" if ids.size == 0 else f"ids {int(ids.min())}..{int(ids.max())}"


def check_split(store: Store, split: str, labelled: bool = False, flag: str = "--split") -> None:
    """The split has committed images (and, with ``labelled``, labels); ``flag`` names the option to fix."""
    if not store.image_shards(split):
        have = store.image_splits()
        raise UserError(f"{flag} {split}: the store {store.root} has no committed images of that split "
                        f"(it has: {', '.join(have) or 'none'}); pick one of those or fetch it first")
    if labelled and not has_labels(store, split):
        raise UserError(f"--split {split}: an unlabelled split (no image has labels), so there is nothing to "
                        f"score against; evaluate a labelled split, or use 'wdr-pipe predict --split {split}'")


def store_columns(run: RunFolder, store: Store, required: bool = True) -> Optional[np.ndarray]:
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


def check_features(run: RunFolder, store: Store) -> None:
    """A run with the wide part needs its feature config in the store."""
    key = run.feature_key
    if key and key not in store.features.keys():
        raise UserError(f"--store {store.root}: the run {run.root} uses the wide part on feature config {key}, which "
                        f"this store does not have (it has: {', '.join(store.features.keys()) or 'none'}); run "
                        f"'wdr-pipe features --store {store.root}' with the training store's feature settings")


def check_inputs(run: RunFolder, store: Store, split: str, labelled: bool = False) -> Optional[np.ndarray]:
    """Every check of a (run, store, split) before a model is loaded: the split, the label space and
    the wide features (of each member, for an ensemble); the run's label columns in the store."""
    check_split(store, split, labelled)
    columns = store_columns(run, store, required=labelled)
    members = [open_run(m["path"], flag=f"{run.root}: member") for m in run.doc["members"]] \
        if run.kind == "ensemble" else [run]
    for member in members:
        check_features(member, store)
    return columns


def fallback_labels(run: RunFolder, store: Optional[Store]) -> np.ndarray:
    """The labels given to an image the model could not see (a failed download): the k most frequent
    training labels, k chosen so that giving that set to every image has the best expected micro-F1
    under the training frequencies: ``2 sum_top-k p / (k + sum_all p)``, ``p`` = positives / images."""
    counts = run.train_positives.astype(np.float64)
    n = image_rows(store, run.train_split) if store is not None and store.image_shards(run.train_split) else 0
    if not n:  # the training split is not in this store: its size from the run's own counts
        res = run.result_if_finished()
        details, counts = (res.details, res.counts) if res is not None else ({}, {})
        epochs = max(1, int(details.get("epochs", 1) or 1))
        n = int(run.doc.get("train_images", 0)) or int(counts.get("samples", 0)) // epochs
    p = counts / max(n, int(counts.max(initial=0)), 1)
    order = np.argsort(-p, kind="stable")
    f1 = 2 * np.cumsum(p[order]) / (np.arange(1, p.size + 1) + p.sum())
    k = int(np.argmax(f1)) + 1 if p.sum() > 0 else 0
    return np.sort(run.label_ids[order[:k]])


# the settings of FetchConfig that decide how an image is resized and encoded
RESIZE_FIELDS = ("size", "resize_mode", "quality", "min_size", "max_pixels")


def split_spec(store: Optional[Store], splits: Sequence[str]) -> Tuple[FetchConfig, Optional[str]]:
    """The fetch settings of the first of ``splits`` that ``store`` has them for (what new photos are resized
    with, as ``wdr_pipe.imaging.process`` takes them) and that split; fetch's defaults and None without."""
    for split in splits:
        doc = fetch_settings(store, split) if store is not None else None
        if doc is not None:
            return FetchConfig(**{k: doc[k] for k in RESIZE_FIELDS if k in doc}), split
    return FetchConfig(), None


def image_spec(run: RunFolder, store: Optional[Store]) -> Tuple[FetchConfig, str]:
    """The fetch settings of the run's training split in ``store`` and where they came from."""
    spec, split = split_spec(store, [run.train_split])
    if split is None:
        log.warning("no fetch settings of split %s found; new images are resized with fetch's defaults",
                    run.train_split)
        return spec, "fetch defaults"
    return spec, f"{store.root} ({split})"


__all__ = ["check_features", "check_inputs", "check_split", "fallback_labels", "image_spec", "split_spec",
           "store_columns"]
