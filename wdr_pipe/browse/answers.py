"""What the page answers from, computed once before the server starts and kept: ``open_answers``.

- the catalog of stored images and the label space (``catalog.py``: small columns of the image shards);
- the faiss index of each split's embeddings: ``similar``'s own cache under
  ``STORE/embeddings/KEY/SPLIT/_search/``, built the first time and reused after;
- with a run, its probabilities for every stored image, kept in
  ``RUN/browse/<split>-<digest>.parquet`` (``predictions.parquet``'s format: image_id, probs, predicted,
  with the source in the file metadata) where the digest hashes what they depend on: the checkpoint's
  weights digest, TTA, split and the store's fingerprint (``ModelScorer.source``). A restart with the same
  run, store and settings reads them back and scores nothing; ``RUN/eval/<split>/predictions.parquet`` of
  an evaluation with the same source is reused too. A run folder that cannot be written gets a warning
  and the probabilities are kept in memory only.

Every check (run against store, embeddings present, checkpoint readable) runs before any scoring.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..cache import Store, open_store
from ..errors import UserError
from ..progress import Hook
from . import adapter
from .catalog import Catalog, Labels, rows_of

log = logging.getLogger("wdr_pipe")


@dataclasses.dataclass
class SplitIndex:
    """One split's faiss index and, per index row, the catalog row of its image."""

    split: str
    index: Any
    rows: np.ndarray


@dataclasses.dataclass
class Answers:
    """Everything a request is answered from (built by ``open_answers``, or by hand in the benchmark)."""

    store: Optional[Store]
    labels: Labels
    catalog: Catalog
    indexes: List[SplitIndex]
    embeddings: Optional["adapter.Embeddings"] = None
    model: Optional["adapter.Model"] = None
    probs: Optional[np.ndarray] = None        # (N, L) of the run's label columns; NaN rows: not scored
    cols: Optional[np.ndarray] = None         # (L,) positions of the run's labels in the label space
    thresholds: Optional[np.ndarray] = None   # (L,)
    spec: Any = None                          # the fetch settings an upload is resized with
    notes: List[str] = dataclasses.field(default_factory=list)
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.postings = self.catalog.postings(len(self.labels))
        self.index_of = {x.split: x for x in self.indexes}
        self.index_pos: Dict[int, tuple] = {}  # catalog row -> (split index, index row)
        for x in self.indexes:
            for r, g in enumerate(x.rows.tolist()):
                if g >= 0:
                    self.index_pos[g] = (x, r)
        self.model_col = np.full(len(self.labels), -1, np.int64)  # label position -> run column (-1: none)
        if self.cols is not None:
            self.model_col[self.cols] = np.arange(len(self.cols))

    @property
    def has_model(self) -> bool:
        return self.probs is not None

    def on(self, g: int) -> np.ndarray:
        """Run columns predicted on for catalog row ``g`` (empty when the model could not read it)."""
        p = self.probs[g]
        return np.flatnonzero(p >= self.thresholds) if not np.isnan(p[0]) else np.zeros(0, np.int64)


def _digest(source: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()[:12]


def predictions_folder(model: "adapter.Model") -> Path:
    """``RUN/browse/``: where the run's probabilities of stored images are kept for the page."""
    return model.root / "browse"


def _split_probs(model: "adapter.Model", split: str, progress: Hook, notes: List[str]):
    """(ids, probs) of ``split``: read back when kept from the same source, else scored once and kept."""
    source = model.source(split)
    folder = predictions_folder(model)
    path = folder / f"{split}-{_digest(source)}.parquet"
    hit = model.read_probs(path, source)
    if hit is not None:
        return hit, False
    ids, probs = model.score_split(split, progress)
    try:
        for old in folder.glob(f"{split}-*.parquet"):  # this store's earlier probabilities of the split
            was = model.stale_source(old)
            if was is None or was.get("store") == source.get("store"):
                old.unlink(missing_ok=True)
        model.write_probs(path, ids, probs, source)
    except (PermissionError, UserError, OSError) as e:
        notes.append(f"{folder}: cannot keep the run's probabilities there ({e}); they are computed again at the "
                     "next start")
    return (ids, probs), True


def open_answers(store, run: Optional[str] = None, embeddings: Optional[str] = None, *,
                 checkpoint: Optional[str] = None, tta: Optional[str] = None, device: str = "auto",
                 batch_size: int = 64, workers: int = 2, wide_fn: Optional["adapter.WideFn"] = None,
                 progress_for=lambda stage: None) -> Answers:
    """Check the inputs, then load (computing only what was never computed) everything the page answers from."""
    t0 = time.monotonic()
    store = open_store(store)
    splits = store.input_splits()
    run_obj = adapter.open_run(run) if run is not None else None
    notes: List[str] = []
    model = None
    if run_obj is not None:
        model = adapter.Model(run_obj, store, checkpoint, tta, device, batch_size, workers, wide_fn)
        model.check(splits)
    key = adapter.pick_embeddings(store, run_obj, embeddings)
    emb = adapter.Embeddings(store, key, device)
    have, missing = emb.splits()
    if not have:
        raise UserError(f"--store {store.root}: the embeddings {key} cover no split completely; run "
                        f"'{emb.command()}' first")
    for split in missing:
        notes.append(f"split {split} has no embeddings {key}: photo search leaves it out; run "
                     f"'{emb.command(split)}' to add it")
    labels = Labels.read(store)
    catalog = Catalog.read(store, labels)
    seconds = {"checks": time.monotonic() - t0}
    t = time.monotonic()
    indexes = []
    for split in have:
        index, ids, _, _ = emb.index(split)
        indexes.append(SplitIndex(split, index, rows_of(ids.tolist(), catalog, split)))
    seconds["indexes"] = time.monotonic() - t
    probs = cols = thresholds = None
    if model is not None:
        t = time.monotonic()
        cols = np.asarray([labels.position(int(i)) for i in model.label_ids], dtype=np.int64)
        probs = np.full((len(catalog), len(cols)), np.nan, np.float32)
        scored = []
        for split in splits:
            (ids, p), computed = _split_probs(model, split, progress_for(f"score {split}"), notes)
            g = rows_of(ids.tolist(), catalog, split)
            probs[g[g >= 0]] = p[g >= 0]
            if computed:
                scored.append(split)
        thresholds = np.asarray(model.thresholds, np.float32)
        unread = int(np.isnan(probs[:, 0]).sum()) if len(cols) else 0
        if unread:
            notes.append(f"{unread} stored images could not be read by the model (they failed to decode): "
                         "they show no predicted tags")
        seconds["scored" if scored else "probabilities"] = time.monotonic() - t
    t = time.monotonic()
    emb.load()
    seconds["embedder"] = time.monotonic() - t
    seconds["total"] = time.monotonic() - t0
    return Answers(store, labels, catalog, indexes, emb, model, probs, cols, thresholds,
                   adapter.fetch_spec(store, run_obj), notes, seconds)


__all__ = ["Answers", "SplitIndex", "open_answers", "predictions_folder"]
