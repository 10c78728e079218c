"""Small readers: a split's index ids, the label map, fetch settings, what its fetch counted
(ok, failed by reason, rows covered) and row counts (footers and small
columns only; no image is read).
"""
from __future__ import annotations

import collections
from typing import Dict, List, Optional

import pyarrow.parquet as pq

from ..errors import UserError
from .commit import read_commit
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
    doc = as_store(store).fetch_settings(split)
    return None if doc is None else dict(doc["config"])


def image_rows(store: StoreLike, split: str) -> int:
    """Rows of the committed image shards of ``split`` (from the Parquet footers)."""
    return sum(pq.read_metadata(p).num_rows for p in as_store(store).image_shards(split))


def fetch_counts(store: StoreLike, split: str) -> Dict[str, object]:
    """What the committed image shards of ``split`` hold: ``ok`` rows (footers), ``failed`` rows and
    ``by_status`` (their failure files' ``status`` column, sorted by status) and ``covered`` (index
    rows that a fetch has tried, from the commit markers)."""
    ok = failed = covered = 0
    by_status: Dict[str, int] = collections.Counter()
    for shard in as_store(store).image_shards(split):
        rows, fails = pq.read_metadata(shard).num_rows, collections.Counter()
        if failures_path(shard).exists():
            for row in pq.read_table(failures_path(shard), columns=["status"]).column("status").value_counts().to_pylist():
                fails[row["values"]] += int(row["counts"])
        ok, failed = ok + rows, failed + sum(fails.values())
        by_status.update(fails)
        span = (read_commit(shard) or {}).get("rows")
        covered += span[1] - span[0] if isinstance(span, list) and len(span) == 2 else rows + sum(fails.values())
    return {"ok": ok, "failed": failed, "by_status": dict(sorted(by_status.items())), "covered": covered}


def failures_by_status(store: StoreLike, split: str) -> Dict[str, int]:
    """Failed rows of the committed shards of ``split``, counted by fetch status, the most frequent first."""
    counts = fetch_counts(store, split)["by_status"]
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def has_labels(store: StoreLike, split: str) -> bool:
    """Whether any committed image of ``split`` has a label list (not null)."""
    for shard in as_store(store).image_shards(split):
        col = pq.ParquetFile(shard).read(columns=["labels"]).column(0)
        if col.null_count < len(col):
            return True
    return False


__all__ = ["failures_by_status", "fetch_counts", "fetch_settings", "has_labels", "image_rows", "index_ids", "label_map"]
