"""Index readers: the inputs of ``wdr-pipe fetch`` -> tables in the ``INDEX`` schema.

Accepted inputs (docs/inputs.md):
- FGVC5 JSON (``train.json``, ``validation.json``, ``test.json``);
- CSV / TSV / Parquet with ``image_id``, ``url`` (or ``urls``) and optional ``labels``;
- the Clothing Attributes Dataset folder (see ``clothing.py``);
- a label map CSV ``labelId,taskId,labelName,taskName`` -> ``STORE/label_map.parquet``.
The file formats are read in ``formats.py``, the folder in ``clothing.py``; ``ingest.py``
writes what they read into the store.

Every reader returns a table with the ``INDEX`` schema: labels are the input's own
integer ids, deduplicated and sorted, and null where the input says nothing about
an image (an unlabelled split). Anything malformed stops with one ``UserError``
naming the file, the record and the fix.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from ...cache.schema import LABEL_MAP
from ...errors import UserError
from . import clothing
from .formats import (ACCEPTED, is_gzip, read_csv_columns, read_delimited, read_fgvc5, read_parquet,
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
