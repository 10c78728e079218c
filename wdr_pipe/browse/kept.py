"""What a start with a run keeps in ``RUN/browse/``, so that the next one computes nothing and waits for nothing.

- ``<split>-<digest>.parquet``: the run's probabilities of every stored image of the split, in
  ``predictions.parquet``'s format (image_id, probs, predicted; ``label_ids``, ``thresholds`` and
  ``source`` in the file metadata), under a digest of that source: the checkpoint's weights digest,
  checkpoint, TTA, split, store and the store's fingerprint of the split (``ModelScorer.source``).
  Scored once (or taken from an evaluation's ``RUN/eval/<split>/predictions.parquet`` of the same
  source), then read back by every start with the same source.
- ``start-<digest>.json``, written last by a start that loaded and checked everything: the digest
  hashes the store's path and the settings (checkpoint, TTA, --embeddings); the record holds what
  that start read (the run's config, thresholds and checkpoint files and the embedding weights, by
  size and modification time; the store's fingerprint of each split, its label map and indexes;
  its embedding keys and which splits they cover) and what it found (the kept file of each split, the
  label ids, thresholds, the embedding key, the fetch settings). A start whose record still holds
  reads the kept files and serves at once, without importing torch; the model loads after, in the
  background. Anything changed: the start loads and checks everything again, and writes a new record.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from .. import __version__
from ..cache import Store, read_json, write_json
from ..errors import UserError
from . import adapter

log = logging.getLogger("wdr_pipe")
RECORD_VERSION = 1


def digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def folder(run_root) -> Path:
    """``RUN/browse/``."""
    return Path(run_root).expanduser().resolve() / "browse"


def file_stats(paths: List[Path]) -> List[list]:
    out = []
    for p in paths:
        try:
            st = Path(p).stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(p), None, None])
    return out


def store_state(store: Store, splits: List[str], feature_keys: List[str], covered: List[str]) -> Dict[str, Any]:
    """What a start read of the store, compared before a record is trusted."""
    paths = [store.label_map_path] + [store.index_path(s) for s in store.splits()]
    return {"splits": list(splits), "fingerprints": {s: store.fingerprint(s, *feature_keys) for s in splits},
            "files": file_stats(paths), "embedding_keys": store.embeddings.keys(), "covered": list(covered)}


def record_path(run_root, store: Store, settings: Dict[str, Any]) -> Path:
    return folder(run_root) / f"start-{digest({'store': str(store.root), **settings})}.json"


def read_record(path: Path, store: Store, covered_of) -> Optional[Dict[str, Any]]:
    """The record at ``path`` when everything it read is as it was; ``covered_of(key)`` -> the splits the
    embedding key covers now."""
    try:
        doc = read_json(path)
    except UserError:  # missing or unreadable: a start that checks everything again
        return None
    if doc.get("version") != [RECORD_VERSION, __version__] or file_stats([Path(f[0]) for f in doc["files"]]) != doc["files"]:
        return None
    try:
        now = store_state(store, store.input_splits(), doc["feature_keys"], covered_of(doc["key"]))
    except UserError:
        return None
    if now != doc["store"]:
        return None
    return doc


def write_record(path: Path, doc: Dict[str, Any]) -> None:
    write_json(path, {"version": [RECORD_VERSION, __version__], **doc})


def read_probs(path: Path) -> Optional[Tuple[np.ndarray, np.ndarray, List[int], Dict[str, Any]]]:
    """(image ids, (N, L) float32 probabilities, label ids, source) of a kept predictions file (evaluate's
    format, read by ``wdr.runs.evalfiles``); None when it is missing or unreadable."""
    try:
        scored, meta = adapter.read_predictions(path)
        return scored.ids, scored.probs, meta["label_ids"], meta.get("source") or {}
    except (OSError, KeyError, ValueError, pa.ArrowException, UserError):
        return None


def score_and_keep(model, split: str, progress, notes: List[str]) -> Tuple[np.ndarray, np.ndarray, str]:
    """(ids, probs, file name) of ``split``: read back when kept from the same source, else scored once and kept."""
    source = model.source(split)
    where = folder(model.root)
    path = where / f"{split}-{digest(source)}.parquet"
    hit = read_probs(path) if path.exists() else None
    if hit is not None and hit[3] == source and hit[2] == model.label_ids.tolist():
        return hit[0], hit[1], path.name
    ids, probs = model.score_split(split, progress)
    try:
        for old in where.glob(f"{split}-*.parquet"):  # this store's earlier probabilities of the split
            was = read_probs(old)
            if was is None or was[3].get("store") == source.get("store"):
                old.unlink(missing_ok=True)
        model.write_probs(path, ids, probs, source)
    except (UserError, OSError) as e:
        notes.append(f"{where}: cannot keep the run's probabilities there ({e}); they are computed again at the "
                     "next start")
    return ids, probs, path.name


__all__ = ["digest", "file_stats", "folder", "read_probs", "read_record", "record_path", "score_and_keep",
           "store_state", "write_record"]
