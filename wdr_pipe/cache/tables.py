"""Small readers for evaluation and prediction: a split's index ids, the label map, fetch settings,
failures by reason and row counts (footers and small columns only; no image is read).
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional

import pyarrow.parquet as pq

from ..errors import UserError
from .store import StoreLike, as_store, failures_path


def index_ids(store: StoreLike, split: str) -> List[str]:
    """The ``image_id`` of every row of ``index/<split>.parquet``, in index order; a ``UserError``
    naming the splits the store has when there is no such index."""
    store = as_store(store)
    path = store.index_path(split)
    if not path.exists():
        have = store.splits()
        raise UserError(f"--split {split}: the store {store.root} has no index of that split "
                        f"(it has: {', '.join(have) or 'none'}); pick one of those or fetch its index first")
    return [str(i) for i in pq.ParquetFile(path).read(columns=["image_id"]).column(0).to_pylist()]


def label_map(store: StoreLike):
    """The store's label map as a pandas DataFrame (``labelId, taskId, labelName, taskName``), or
    ``None`` when the store has none."""
    store = as_store(store)
    if not store.label_map_path.exists():
        return None
    return pq.read_table(store.label_map_path).to_pandas()


def fetch_settings(store: StoreLike, split: str) -> Optional[Dict]:
    """The image settings ``split`` was fetched with (``size``, ``resize_mode``, ``quality``,
    ``min_size``, ``max_pixels``), or ``None`` when they were not recorded."""
    path = as_store(store).fetch_settings_path(split)
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def image_rows(store: StoreLike, split: str) -> int:
    """Rows of the committed image shards of ``split`` (from the Parquet footers)."""
    return sum(pq.read_metadata(p).num_rows for p in as_store(store).image_shards(split))


def failures_by_status(store: StoreLike, split: str) -> Dict[str, int]:
    """Failed rows of the committed shards of ``split``, counted by fetch status."""
    out: Dict[str, int] = {}
    for shard in as_store(store).image_shards(split):
        path = failures_path(shard)
        if path.exists():
            for row in pq.read_table(path, columns=["status"]).column("status").value_counts().to_pylist():
                out[row["values"]] = out.get(row["values"], 0) + int(row["counts"])
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def has_labels(store: StoreLike, split: str) -> bool:
    """Whether any committed image of ``split`` has a label list (not null)."""
    for shard in as_store(store).image_shards(split):
        col = pq.ParquetFile(shard).read(columns=["labels"]).column(0)
        if col.null_count < len(col):
            return True
    return False


__all__ = ["failures_by_status", "fetch_settings", "has_labels", "image_rows", "index_ids", "label_map"]
