"""What the page answers from, computed once and kept: ``open_answers``.

- the catalog of stored images and the label space (``catalog.py``: small columns of the image shards);
- the faiss index of each split's embeddings: ``similar``'s own cache under
  ``STORE/embeddings/KEY/SPLIT/_search/``, built the first time and reused after;
- with a run, its probabilities for every stored image, scored once and kept in ``RUN/browse/``
  (``kept.py``), and the model itself for a photo's tags and Grad-CAM.

The first start with a run loads the model, checks everything, reads or computes what is missing and
records what it read. A later start whose record still holds serves at once from the kept files and
loads the model in a background thread (timm and the checkpoint: seconds); a photo query waits for it.
Every check a user can fail runs before the server starts: in the first start directly, in a later
one by the record (nothing it read has changed since a start that passed them).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..cache import Store, open_store
from ..errors import UserError
from . import adapter, kept
from .catalog import Catalog, Labels, rows_of

log = logging.getLogger("wdr_pipe")


@dataclasses.dataclass
class SplitIndex:
    """One split's faiss index and, per index row, the catalog row of its image."""

    split: str
    index: Any
    rows: np.ndarray


class Loading:
    """Work done in a background thread after the server is up; ``wait()`` -> None or the error's line."""

    def __init__(self, work: Callable[[], None], what: str):
        self.done, self.error, self.what = threading.Event(), None, what
        self.thread = threading.Thread(target=self._run, args=(work,), name=f"browse: {what}", daemon=True)
        self.thread.start()

    def _run(self, work):
        t = time.monotonic()
        try:
            work()
            log.info("browse: done %s in %.1f s", self.what, time.monotonic() - t)
        except Exception as e:  # said on every photo query and in the log; the rest of the page works on
            self.error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            log.error("browse: %s failed: %s", self.what, self.error)
        finally:
            self.done.set()

    def wait(self, timeout: Optional[float] = None) -> Optional[str]:
        if not self.done.wait(timeout):
            return f"still {self.what}; try again in a moment"
        return self.error


@dataclasses.dataclass
class Answers:
    """Everything a request is answered from (built by ``open_answers``, or by hand in the benchmark)."""

    store: Optional[Store]
    labels: Labels
    catalog: Catalog
    indexes: List[SplitIndex]
    embeddings: Any = None                    # adapter.Embeddings (a photo's vector)
    model: Any = None                         # adapter.Model (a photo's tags, Grad-CAM); set once loaded
    probs: Optional[np.ndarray] = None        # (N, L) of the run's label columns; NaN rows: not scored
    cols: Optional[np.ndarray] = None         # (L,) positions of the run's labels in the label space
    thresholds: Optional[np.ndarray] = None   # (L,)
    spec: Any = None                          # the fetch settings an upload is resized with
    run: Optional[Dict[str, Any]] = None      # the run, described for the page
    notes: List[str] = dataclasses.field(default_factory=list)
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
    loading: Optional[Loading] = None

    def __post_init__(self):
        self.postings = self.catalog.postings(len(self.labels))
        self.index_pos: Dict[int, tuple] = {}  # catalog row -> (its split's index, index row)
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

    def ready(self, timeout: float = 300.0) -> Optional[str]:
        """None once the models are loaded; else why not (still loading, or the error)."""
        return self.loading.wait(timeout) if self.loading is not None else None

    def on(self, g: int) -> np.ndarray:
        """Run columns predicted on for catalog row ``g`` (empty when the model could not read it)."""
        p = self.probs[g]
        return np.flatnonzero(p >= self.thresholds) if len(p) and not np.isnan(p[0]) else np.zeros(0, np.int64)


def _base(store: Store, key: str, device: str, notes: List[str]) -> Answers:
    """The answers every start has: the catalog, the labels, the embeddings' faiss indexes."""
    emb = adapter.Embeddings(store, key, device)
    have, missing = emb.splits()
    if not have:
        raise UserError(f"--store {store.root}: the embeddings {key} cover no split completely; run "
                        f"'{emb.command()}' first")
    notes += [f"split {s} has no embeddings {key}: photo search leaves it out; run '{emb.command(s)}' to add it"
              for s in missing]
    labels = Labels.read(store)
    catalog = Catalog.read(store, labels)
    indexes = []
    for split in have:
        index, ids, _, _ = emb.index(split)
        indexes.append(SplitIndex(split, index, rows_of(ids.tolist(), catalog, split)))
    return Answers(store, labels, catalog, indexes, emb, notes=notes)


def _with_run(a: Answers, run: Dict[str, Any], label_ids, thresholds) -> None:
    a.run = run
    a.thresholds = np.asarray(thresholds, np.float32)
    a.cols = np.asarray([a.labels.position(int(i)) for i in label_ids], dtype=np.int64)
    a.model_col[a.cols] = np.arange(len(a.cols))
    a.probs = np.full((len(a.catalog), len(a.cols)), np.nan, np.float32)


def _place(a: Answers, split: str, ids: np.ndarray, probs: np.ndarray) -> None:
    g = rows_of(ids.tolist(), a.catalog, split)
    a.probs[g[g >= 0]] = probs[g >= 0]


def _as_before(store: Store, run: str, settings: Dict[str, Any], load_model: Callable, device: str
               ) -> Optional[Answers]:
    """The answers of the last start with these settings, when nothing it read has changed (no torch
    import, no model); the model then loads in the background (``load_model(answers, record)``)."""
    path = kept.record_path(run, store, settings)
    record = kept.read_record(path, store, lambda key: adapter.Embeddings(store, key, device).splits()[0])
    if record is None:
        return None
    a = _base(store, record["key"], device, [])
    _with_run(a, record["run"], record["label_ids"], record["thresholds"])
    sources = {}
    for split, name in record["kept"].items():
        hit = kept.read_probs(kept.folder(run) / name)
        if hit is None or hit[2] != record["label_ids"]:
            return None
        _place(a, split, hit[0], hit[1])
        sources[split] = hit[3]
    a.spec = types.SimpleNamespace(**record["spec"])
    a.loading = Loading(lambda: load_model(a, path, sources), "loading the model")
    return a


def open_answers(store, run: Optional[str] = None, embeddings: Optional[str] = None, *,
                 checkpoint: Optional[str] = None, tta: Optional[str] = None, device: str = "auto",
                 batch_size: int = 64, workers: int = 2, wide_fn: Optional["adapter.WideFn"] = None,
                 progress_for=lambda stage: None) -> Answers:
    """Check the inputs, then load (computing only what was never computed) everything the page answers from."""
    t0 = time.monotonic()
    store = open_store(store)
    splits = store.input_splits()
    notes: List[str] = []
    settings = {"checkpoint": checkpoint, "tta": tta, "embeddings": embeddings}

    def model_of(run_obj):
        return adapter.Model(run_obj, store, checkpoint, tta, device, batch_size, workers, wide_fn)

    def load_model(a: Answers, record: Path, sources: Dict[str, Any]) -> None:
        model = model_of(adapter.open_run(run))
        a.embeddings.load()
        a.model = model
        changed = [s for s, src in sources.items() if model.source(s) != src]
        if changed:  # a file changed behind its size and time: the next start computes them again
            record.unlink(missing_ok=True)
            log.warning("browse: the kept probabilities of %s are not this model's; restart to compute them "
                        "again", ", ".join(changed))

    a = _as_before(store, run, settings, load_model, device) if run is not None else None
    if a is not None:
        _note_unread(a)
        a.seconds = {"kept": time.monotonic() - t0, "total": time.monotonic() - t0}
        return a
    run_obj = adapter.open_run(run) if run is not None else None
    if run_obj is not None:
        adapter.check_run(run_obj, store, splits, checkpoint)
    key = adapter.pick_embeddings(store, run_obj, embeddings)
    a = _base(store, key, device, notes)
    a.spec = adapter.fetch_spec(store, run_obj)
    a.seconds = {"read": time.monotonic() - t0}
    t = time.monotonic()
    if run_obj is not None:
        model = model_of(run_obj)
        _with_run(a, adapter.describe_run(run_obj, checkpoint, tta), model.label_ids, model.thresholds)
        a.run["thresholds"] = model.threshold_source
        names = {}
        for split in splits:
            ids, p, names[split] = kept.score_and_keep(model, split, progress_for(f"score {split}"), notes)
            _place(a, split, ids, p)
        a.model = model
    a.embeddings.load()
    a.seconds["model"] = time.monotonic() - t
    if run_obj is not None and not any(n.startswith(str(kept.folder(run))) for n in notes):
        covered = [x.split for x in a.indexes]
        doc = {"key": key, "kept": names, "run": a.run, "label_ids": a.model.label_ids.tolist(),
               "thresholds": a.thresholds.tolist(), "spec": dataclasses.asdict(a.spec),
               "feature_keys": adapter.feature_keys(run_obj),
               "files": kept.file_stats(adapter.start_files(run_obj, checkpoint) + a.embeddings.source_files()),
               "store": kept.store_state(store, splits, adapter.feature_keys(run_obj), covered)}
        try:
            kept.write_record(kept.record_path(run, store, settings), doc)
        except (UserError, OSError) as e:
            notes.append(f"{kept.folder(run)}: cannot record this start ({e}); the next start loads the model first")
    _note_unread(a)
    a.seconds["total"] = time.monotonic() - t0
    return a


def _note_unread(a: Answers) -> None:
    unread = int(np.isnan(a.probs[:, 0]).sum()) if a.has_model and len(a.cols) else 0
    if unread:
        a.notes.append(f"{unread} stored images could not be read by the model (they failed to decode): "
                       "they show no predicted tags")


__all__ = ["Answers", "Loading", "SplitIndex", "open_answers"]
