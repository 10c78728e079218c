"""Index readers: the inputs of ``wdr-pipe fetch`` -> ``STORE/index/<split>.parquet``.

Accepted inputs (docs/inputs.md):
- FGVC5 JSON (``train.json``, ``validation.json``, ``test.json``);
- CSV / TSV / Parquet with ``image_id``, ``url`` (or ``urls``) and optional ``labels``;
- the Clothing Attributes Dataset folder (see ``clothing.py``);
- a label map CSV ``labelId,taskId,labelName,taskName`` -> ``STORE/label_map.parquet``.
The file formats are read in ``index_formats.py``, the folder in ``clothing.py``.

Every reader returns a table with the ``INDEX`` schema: labels are the input's own
integer ids, deduplicated and sorted, and null where the input says nothing about
an image (an unlabelled split). Anything malformed stops with one ``UserError``
naming the file, the record and the fix. ``ingest`` reads every input before it
writes anything, so a bad second file leaves the store untouched.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..cache import Store
from ..cache.atomic import write_parquet_atomic, write_text_atomic
from ..cache.schema import LABEL_MAP
from ..errors import UserError
from . import clothing
from .index_formats import (ACCEPTED, is_gzip, read_csv_columns, read_delimited, read_fgvc5, read_parquet,
                            read_parquet_table, to_int)

log = logging.getLogger("wdr_pipe")

SEPARATORS = {".csv": ",", ".tsv": "\t"}
PARQUET = (".parquet", ".pq")
SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LABEL_MAP_HELP = "a label map .csv with the header labelId,taskId,labelName,taskName"
GZIP_OK = (".json", ".csv", ".tsv")
# Without a label map the label space is 1 .. the largest id (docs/store.md): larger ids need one.
MAX_LABEL_ID = 99_999


# -- public API ----------------------------------------------------------------

def read_index(path, split: Optional[str] = None) -> List[Tuple[str, pa.Table]]:
    """Read one input; returns ``[(split_name, table)]`` with tables in the ``INDEX`` schema.

    The format comes from the extension (or a folder: the Clothing Attributes Dataset);
    the split name from the file stem ("clothing" for the folder) unless ``split`` is given.
    """
    path = Path(path)
    if path.is_dir():
        return [(_split_name(path, split or clothing.DEFAULT_SPLIT), clothing.read_clothing(path))]
    suffix, stem = _format(path)
    _check_file(path)
    if is_gzip(path) and suffix not in GZIP_OK:
        raise UserError(f"{path}: a gzipped {suffix or 'file'} is not read; gzip only .json, .csv and .tsv "
                        f"indexes (Parquet compresses itself), or give it unpacked")
    name = _split_name(path, split or stem)
    if suffix == ".json":
        table = read_fgvc5(path)
    elif suffix in SEPARATORS:
        table = read_delimited(path, SEPARATORS[suffix])
    elif suffix in PARQUET:
        table = read_parquet(path)
    else:
        raise UserError(f"{path}: unknown extension {suffix!r}; give {ACCEPTED}")
    labelled = table["labels"].null_count < len(table)
    log.info("%s: split %r, %d images, %s", path, name, len(table), "labelled" if labelled else "unlabelled")
    return [(name, table)]


def read_label_map(path) -> pa.Table:
    """A label map (``labelId,taskId,labelName,taskName``; CSV, TSV or Parquet) in the ``LABEL_MAP`` schema."""
    path = Path(path)
    _check_file(path, LABEL_MAP_HELP)
    suffix, _ = _format(path)
    if is_gzip(path) and suffix not in SEPARATORS:
        raise UserError(f"{path}: a gzipped {suffix or 'file'} is not read; give {LABEL_MAP_HELP} (or .csv.gz)")
    if suffix in SEPARATORS:
        cols, record = read_csv_columns(path, SEPARATORS[suffix], LABEL_MAP_HELP), (lambda i: f"row {i + 1}")
    elif suffix in PARQUET:
        cols, record = read_parquet_table(path).to_pydict(), (lambda i: f"row {i + 1}")
    else:
        raise UserError(f"{path}: unknown extension {suffix!r}; give {LABEL_MAP_HELP} (or .tsv, .parquet)")
    if "labelId" not in cols:
        raise UserError(f"{path}: no labelId column (found {', '.join(map(str, cols)) or 'none'}); "
                        f"give {LABEL_MAP_HELP}")
    n = len(cols["labelId"])
    out: Dict[str, list] = {"labelId": [], "taskId": [], "labelName": [], "taskName": []}
    for i in range(n):
        for key, kind in (("labelId", int), ("taskId", int), ("labelName", str), ("taskName", str)):
            value = cols[key][i] if key in cols else None
            if value is None or (isinstance(value, str) and not value.strip()):
                if key == "labelId":
                    raise UserError(f"{path}: {record(i)}: empty labelId; give every row an integer labelId")
                value = None
            elif kind is int:
                value = to_int(value, lambda: f"{path}: {record(i)}: {key} {value!r} is not an integer; fix that row")
            else:
                value = str(value).strip()
            out[key].append(value)
    dup = _first_duplicate(out["labelId"])
    if dup is not None:
        raise UserError(f"{path}: labelId {dup} appears twice; keep one row per label")
    if not n:
        raise UserError(f"{path}: no rows; a label map needs one row per label")
    order = np.argsort(np.array(out["labelId"], np.int64), kind="stable")
    return pa.Table.from_arrays([pa.array(out[f.name], f.type).take(pa.array(order)) for f in LABEL_MAP],
                                schema=LABEL_MAP)


def holdout_mask(image_ids: pa.Array, fraction: float) -> np.ndarray:
    """True for the rows held out: the first 8 bytes of sha256(image_id) as a fraction of 2^64,
    below ``fraction``. Deterministic, independent of row order and of the other rows."""
    ids = image_ids.to_pylist()
    draws = np.fromiter((int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") for i in ids),
                        dtype=np.uint64, count=len(ids))
    return draws < np.uint64(min(fraction, 1.0) * 2.0 ** 64 - 1)


def _hold_out(found: Dict[str, Tuple[Path, pa.Table]], names: List[str], holdout: Tuple[str, float]) -> str:
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


def ingest(store: Store, paths, split: Optional[str] = None, label_map=None,
           holdout: Optional[Tuple[str, float]] = None) -> List[str]:
    """Read every input and write ``STORE/index/<split>.parquet`` (and ``label_map.parquet``).

    Everything is read and checked before anything is written. An index that is already
    in the store with the same content is left alone; a different one is refused.
    The label map comes from ``label_map`` or else from a Clothing Attributes folder among
    the inputs. ``holdout=(NAME, FRACTION)`` splits the one labelled input split: a
    deterministic FRACTION of its rows (by a hash of the image id) becomes split NAME, and
    the store records it. Returns the split names in input order.
    """
    if not isinstance(store, Store):
        store = Store(store, create=True)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: Dict[str, Tuple[Path, pa.Table]] = {}
    names: List[str] = []
    label_source: Optional[Tuple[Path, pa.Table]] = None
    for p in map(Path, paths):
        for name, table in read_index(p, split):
            if name in found:
                raise UserError(f"{p}: gives split {name!r}, as does {found[name][0]}; give each split once "
                                "(fetch them one at a time with --split NAME to rename)")
            found[name] = (p, table)
            names.append(name)
        if p.is_dir() and label_source is None:
            label_source = (p, clothing.label_map_table())
    if label_map is not None:
        label_source = (Path(label_map), read_label_map(label_map))
    held_from = _hold_out(found, names, holdout) if holdout is not None else None

    if label_source is not None:
        _check_labels_known(found, *label_source)
    elif store.label_map_path.exists():
        _check_labels_known(found, store.label_map_path, pq.read_table(store.label_map_path))
    else:
        _check_label_bound(found)

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
    if held_from is not None:
        record = {"split": holdout[0], "from": held_from, "fraction": holdout[1],
                  "rule": "first 8 bytes of sha256(image_id), big-endian, / 2^64 < fraction"}
        write_text_atomic(store.holdout_path(holdout[0]), json.dumps(record, indent=2) + "\n")
    return names


# -- checks shared by the readers ----------------------------------------------

def _check_file(path: Path, what: str = ACCEPTED) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path (give {what})")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file; give {what}")


def _split_name(path: Path, name: str) -> str:
    if not SPLIT_RE.match(name):
        raise UserError(f"{path}: split name {name!r} is not a plain name (letters, digits, '_', '-', '.'); "
                        "pass --split NAME")
    return name


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


def _check_labels_known(found: Dict[str, Tuple[Path, pa.Table]], map_path: Path, label_map: pa.Table) -> None:
    """Every label id of every index must be in the label map (later stages rely on it)."""
    known = label_map["labelId"].combine_chunks()
    for src, table in found.values():
        labels = table["labels"].combine_chunks()
        unknown = pc.invert(pc.is_in(pc.list_flatten(labels), value_set=known))
        if pc.any(unknown).as_py():
            k = pc.index(unknown, True).as_py()
            row = pc.list_parent_indices(labels)[k].as_py()
            raise UserError(f"{src}: image {table['image_id'][row].as_py()!r}: label "
                            f"{pc.list_flatten(labels)[k].as_py()} is not in the label map {map_path}; "
                            "add it to the label map or fix the index")


def _check_label_bound(found: Dict[str, Tuple[Path, pa.Table]]) -> None:
    """Without a label map, label ids must be at most ``MAX_LABEL_ID`` (the label space is 1 .. max id)."""
    for src, table in found.values():
        labels = table["labels"].combine_chunks()
        flat = pc.list_flatten(labels)
        over = pc.greater(flat, MAX_LABEL_ID)
        if len(flat) and pc.any(over).as_py():
            k = pc.index(over, True).as_py()
            row = pc.list_parent_indices(labels)[k].as_py()
            raise UserError(f"{src}: image {table['image_id'][row].as_py()!r}: label {flat[k].as_py()} is over "
                            f"{MAX_LABEL_ID:,}, the largest label id accepted without a label map; pass "
                            "--label-map FILE with one row per label (labelId,taskId,labelName,taskName)")


def _format(path: Path) -> Tuple[str, str]:
    """``(suffix, stem)`` of an input file, through a ``.gz``: ``train.json.gz`` -> ``(".json", "train")``."""
    base = Path(path.name[:-3]) if is_gzip(path) else Path(path.name)
    return base.suffix.lower(), base.stem


def _first_duplicate(values) -> Optional[object]:
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None
