"""Labels of a store as arrays: the label space and multi-hot matrices.

Labels are the dataset's own ids; a multi-hot vector has one column per id
of :func:`label_space`, in that order (column = position in the array).

    >>> ids, Y = load_labels(open_store("store/"), "train")   # (N,), (N, L) uint8
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import UserError
from .store import Store, StoreLike, as_store, read_columns


def label_space(store: StoreLike) -> np.ndarray:
    """The label ids, sorted (int32): from ``label_map.parquet`` if there is one,
    else ``1 .. max id`` seen in any split's index or image shards (``0 .. max id`` when 0 is used)."""
    store = as_store(store)
    if store.label_map_path.exists():
        ids = pq.read_table(store.label_map_path, columns=["labelId"]).column("labelId").to_numpy()
        return np.unique(ids).astype(np.int32)
    top, bottom, files = 0, 1, []
    for split in sorted(set(store.splits()) | set(store.image_splits())):
        index = store.index_path(split)  # image shards copy the index's labels: read them only without one
        files += [index] if index.exists() else store.image_shards(split)
    for f in files:
        m = pc.min_max(pc.list_flatten(pq.read_table(f, columns=["labels"]).column("labels"))).as_py()
        if m["max"] is not None:
            top, bottom = max(top, m["max"]), min(bottom, m["min"])
    return np.arange(bottom, top + 1, dtype=np.int32)


def label_columns(labels: Union[pa.Array, pa.ChunkedArray], space: np.ndarray,
                  where: str = "labels") -> Tuple[np.ndarray, np.ndarray]:
    """``(offsets (N+1,), columns)`` of a list<int32> column: row i's labels sit at positions
    ``columns[offsets[i]:offsets[i+1]]`` of ``space``. Null lists count as empty.
    An id outside ``space`` is a ``UserError`` naming ``where``."""
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    if labels.null_count:
        labels = labels.fill_null(pa.scalar([], labels.type))
    offsets = labels.offsets.to_numpy().astype(np.int64)
    values = labels.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    offsets -= offsets[0]
    if len(space) == 0:
        cols, bad = np.zeros(len(values), np.int32), np.ones(len(values), bool)
    elif space[0] >= 0 and space[-1] < 50_000_000:  # small ids: a lookup table, no search
        top = int(space[-1])
        lut = np.full(top + 2, -1, np.int32)       # lut[-1] and lut[top + 1] stay -1
        lut[space] = np.arange(len(space), dtype=np.int32)
        cols = lut[np.clip(values, -1, top + 1)]
        bad = cols < 0
    else:
        cols = np.searchsorted(space, values).astype(np.int32)
        bad = (cols >= len(space)) | (space[np.minimum(cols, len(space) - 1)] != values)
    if bad.any():
        raise UserError(f"{where}: label id {int(values[bad][0])} is not in the label space "
                        f"({len(space)} ids); fix label_map.parquet or remove it to use 1..max id")
    return offsets, cols


def multi_hot_positions(labels: Union[pa.Array, pa.ChunkedArray], space: np.ndarray,
                        where: str = "labels") -> Tuple[np.ndarray, np.ndarray]:
    """(row, column) of every label in a list<int32> column, columns being positions in ``space``."""
    offsets, cols = label_columns(labels, space, where)
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)), cols


def multi_hot(labels: Union[pa.Array, pa.ChunkedArray], space: np.ndarray, where: str = "labels") -> np.ndarray:
    """Dense multi-hot uint8 (N, len(space)) of a list<int32> column; column j = id ``space[j]``."""
    rows, cols = multi_hot_positions(labels, space, where)
    y = np.zeros((len(labels), len(space)), np.uint8)
    y[rows, cols] = 1
    return y


def _labels_table(store: Store, split: str) -> pa.Table:
    return read_columns(store.require_images(split), ["image_id", "labels"])


def load_labels(store: StoreLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(image_ids, multi_hot uint8 (N, L))`` of the fetched images of ``split``, in shard order."""
    store = as_store(store)
    t = _labels_table(store, split)
    if t.num_rows and t.column("labels").null_count == t.num_rows:
        raise UserError(f"{store.images_dir(split)}: split {split!r} has no labels (an unlabelled split); "
                        "load its features with load_features instead")
    y = multi_hot(t.column("labels"), label_space(store), where=str(store.images_dir(split)))
    return t.column("image_id").to_numpy(zero_copy_only=False), y
