"""``ingest``: the inputs of ``wdr-pipe fetch`` -> ``STORE/index/<split>.parquet`` and ``STORE/label_map.parquet``.

Every input is read and checked (``read.py``) before anything is written, so a bad second file
leaves the store untouched. An index already in the store with the same content is left alone;
a different one is refused. Label ids must be in the label map (or, without one, at most
``MAX_LABEL_ID``). ``holdout`` cuts a split from the one labelled input split by a hash of the
image id, and the store records how (``index/<split>.holdout.json``).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...cache import Store, write_json
from ...cache.atomic import write_parquet_atomic
from ...errors import UserError
from . import clothing
from .read import MAX_LABEL_ID, read_index, read_label_map

log = logging.getLogger("wdr_pipe")

Found = Dict[str, Tuple[Path, pa.Table]]  # split -> (the input it comes from, its index table)
HOLDOUT_RULE = "first 8 bytes of sha256(image_id), big-endian, / 2^64 < fraction"


def ingest(store: Store, paths, split: Optional[str] = None, label_map=None,
           holdout: Optional[Tuple[str, float]] = None) -> List[str]:
    """Read every input and write ``STORE/index/<split>.parquet`` (and ``label_map.parquet``).

    The label map comes from ``label_map`` or else from a Clothing Attributes folder among
    the inputs. ``holdout=(NAME, FRACTION)`` splits the one labelled input split: a
    deterministic FRACTION of its rows (by a hash of the image id) becomes split NAME, and
    the store records it. Returns the split names in input order.
    """
    if not isinstance(store, Store):
        store = Store(store, create=True)
    found, names, label_source = _read_all([paths] if isinstance(paths, (str, Path)) else paths, split)
    if label_map is not None:
        label_source = (Path(label_map), read_label_map(label_map))
    held_from = _hold_out(found, names, holdout) if holdout is not None else None
    _check_labels(store, found, label_source)
    _write_new(store, names, found, label_source)
    if held_from is not None:
        write_json(store.holdout_path(holdout[0]), {"split": holdout[0], "from": held_from,
                                                    "fraction": holdout[1], "rule": HOLDOUT_RULE})
    return names


def _read_all(paths, split: Optional[str]) -> Tuple[Found, List[str], Optional[Tuple[Path, pa.Table]]]:
    """Every input read: its splits, their names in input order, and a folder's own label map."""
    found: Found = {}
    names: List[str] = []
    label_source = None
    for p in map(Path, paths):
        for name, table in read_index(p, split):
            if name in found:
                raise UserError(f"{p}: gives split {name!r}, as does {found[name][0]}; give each split once "
                                "(fetch them one at a time with --split NAME to rename)")
            found[name] = (p, table)
            names.append(name)
        if p.is_dir() and label_source is None:
            label_source = (p, clothing.label_map_table())
    return found, names, label_source


def _check_labels(store: Store, found: Found, label_source: Optional[Tuple[Path, pa.Table]]) -> None:
    """Every label id is in the label map given, or else the store's, or else at most ``MAX_LABEL_ID``."""
    if label_source is not None:
        _check_labels_known(found, *label_source)
    elif store.label_map_path.exists():
        _check_labels_known(found, store.label_map_path, pq.read_table(store.label_map_path))
    else:
        _check_label_bound(found)


def _write_new(store: Store, names: List[str], found: Found, label_source) -> None:
    """Write the indexes (and the label map) the store does not hold yet; refuse ones that differ."""
    writes = []
    for name in names:
        src, table = found[name]
        if _unchanged(store.index_path(name), table, src,
                      f"index for split {name!r} differs from the one already in {store.root}; "
                      "fetch into a new store or pass --split NEWNAME"):
            log.info("%s: index for split %r already in the store, unchanged", src, name)
        else:
            writes.append((table, store.index_path(name)))
    if label_source is not None:
        src, table = label_source
        if not _unchanged(store.label_map_path, table, src,
                          f"label map differs from {store.label_map_path}; fetch into a new store "
                          "or delete that file to replace it"):
            writes.append((table, store.label_map_path))
    for table, target in writes:
        write_parquet_atomic(table, target)
        log.info("wrote %s (%d rows)", target, len(table))


# -- the hold-out split ------------------------------------------------------------

def holdout_mask(image_ids: pa.Array, fraction: float) -> np.ndarray:
    """True for the rows held out: the first 8 bytes of sha256(image_id) as a fraction of 2^64,
    below ``fraction``. Deterministic, independent of row order and of the other rows."""
    ids = image_ids.to_pylist()
    draws = np.fromiter((int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") for i in ids),
                        dtype=np.uint64, count=len(ids))
    return draws < np.uint64(min(fraction, 1.0) * 2.0 ** 64 - 1)


def _hold_out(found: Found, names: List[str], holdout: Tuple[str, float]) -> str:
    """Split the one labelled input split: ``holdout[1]`` of its rows become split ``holdout[0]``."""
    target, fraction = holdout
    if target in found:
        raise UserError(f"--holdout {target}={fraction}: the inputs already give a split {target!r}; "
                        "hold out into another name or drop --holdout")
    labelled = [n for n in names if found[n][1].column("labels").null_count < len(found[n][1])]
    if len(labelled) != 1:
        raise UserError(f"--holdout {target}={fraction}: needs exactly one labelled input split to split "
                        f"(got {', '.join(labelled) or 'none'}); fetch that one alone with --holdout")
    source = labelled[0]
    src, table = found[source]
    held = holdout_mask(table.column("image_id").combine_chunks(), fraction)
    if held.all() or not held.any():
        raise UserError(f"--holdout {target}={fraction}: leaves split {source!r} or {target!r} empty "
                        f"({len(table)} rows); use a fraction that leaves rows on both sides")
    found[source] = (src, table.filter(pa.array(~held)))
    found[target] = (src, table.filter(pa.array(held)))
    names.append(target)
    log.info("%s: held out %d of %d rows of %r as split %r (sha256 of image_id < %.3f)", src, int(held.sum()),
             len(table), source, target, fraction)
    return source



# -- checks ------------------------------------------------------------------------

def _unchanged(target: Path, table: pa.Table, src: Path, differs: str) -> bool:
    """True when ``target`` holds ``table`` already; False when it does not exist; else a UserError."""
    if not target.exists():
        return False
    try:
        old = pq.read_table(target)
    except (pa.ArrowException, OSError):
        old = None
    if old is not None and old.schema.equals(table.schema) and old.equals(table):
        return True
    raise UserError(f"{src}: {differs}")


def _first_label(table: pa.Table, bad) -> Optional[Tuple[str, int]]:
    """``(image id, label)`` of the first label of ``table`` for which ``bad(labels)`` (a mask over
    every label of every row) is true; ``None`` when there is none."""
    labels = table["labels"].combine_chunks()
    flat = pc.list_flatten(labels)
    mask = bad(flat)
    if not len(flat) or not pc.any(mask).as_py():
        return None
    k = pc.index(mask, True).as_py()
    return table["image_id"][pc.list_parent_indices(labels)[k].as_py()].as_py(), flat[k].as_py()


def _check_labels_known(found: Found, map_path: Path, label_map: pa.Table) -> None:
    """Every label id of every index must be in the label map (later stages rely on it)."""
    known = label_map["labelId"].combine_chunks()
    for src, table in found.values():
        first = _first_label(table, lambda flat: pc.invert(pc.is_in(flat, value_set=known)))
        if first:
            raise UserError(f"{src}: image {first[0]!r}: label {first[1]} is not in the label map {map_path}; "
                            "add it to the label map or fix the index")


def _check_label_bound(found: Found) -> None:
    """Without a label map, label ids must be at most ``MAX_LABEL_ID`` (the label space is 1 .. max id)."""
    for src, table in found.values():
        first = _first_label(table, lambda flat: pc.greater(flat, MAX_LABEL_ID))
        if first:
            raise UserError(f"{src}: image {first[0]!r}: label {first[1]} is over {MAX_LABEL_ID:,}, the largest "
                            "label id accepted without a label map; pass --label-map FILE with one row per label "
                            "(labelId,taskId,labelName,taskName)")
