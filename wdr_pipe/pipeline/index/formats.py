"""The index file formats: FGVC5 JSON, CSV/TSV and Parquet -> a table in the ``INDEX`` schema.

Used by ``index.py`` (``read_index`` picks the reader by extension). Readers check
every record and stop at the first problem with one ``UserError`` that names the
file, the record (``images[i]``, ``line N`` or ``row N`` with its image id) and the fix.
Labels go through ``_label_lists``: one vectorised pass that parses, deduplicates and
sorts the ids of every row.
"""
from __future__ import annotations

import contextlib
import gc
import gzip
import json
import logging
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...cache.schema import INDEX
from ...errors import UserError
from .urls import check_urls

log = logging.getLogger("wdr_pipe")

ACCEPTED = ("an FGVC5 .json, a .csv/.tsv/.parquet with image_id,url[,labels] (.json.gz, .csv.gz, .tsv.gz too) "
            "or a Clothing Attributes folder")
LABEL_TYPE = INDEX.field("labels").type
URLS_TYPE = INDEX.field("urls").type
Record = Callable[[int], str]  # row number -> how to name that record in a message


def to_int(value, message: Callable[[], str]) -> int:
    """An int32 from an int or an integer string; ``message()`` is the error otherwise."""
    if isinstance(value, (bool, float)) or not isinstance(value, (int, str, np.integer)):
        raise UserError(message())
    try:
        out = int(value)
    except ValueError:
        raise UserError(message()) from None
    if not -(2**31) <= out < 2**31:
        raise UserError(message())
    return out


def _build(path: Path, ids: pa.Array, urls: pa.Array, labels: Optional[pa.Array], record: Record,
           separated: bool = False) -> pa.Table:
    """The INDEX table; ``separated``: the URLs were split out of text cells (CSV/TSV), see ``urls.py``."""
    n = len(ids)
    if n == 0:
        raise UserError(f"{path}: no images in the file; give an index with at least one image")
    empty = pc.fill_null(pc.equal(pc.list_value_length(urls), 0), True)  # a null list has no URL either
    if pc.any(empty).as_py():
        i = pc.index(empty, True).as_py()
        raise UserError(f"{path}: {record(i)}: no URL; give every image at least one URL")
    urls = check_urls(path, urls, record, separated)
    if labels is None:
        labels = pa.nulls(n, LABEL_TYPE)
    return pa.Table.from_arrays([ids, urls, labels], schema=INDEX)


def _check_ids(path: Path, ids: pa.Array, record: Record) -> None:
    """A duplicate or empty image id is a UserError naming the record."""
    if len(pc.unique(ids)) != len(ids):
        seen = set()
        for i, iid in enumerate(ids.to_pylist()):
            if iid in seen:
                raise UserError(f"{path}: {record(i)}: image id {iid!r} appears twice; give each image once")
            seen.add(iid)
    empty = pc.equal(pc.utf8_length(ids), 0)
    if pc.any(empty).as_py():
        raise UserError(f"{path}: {record(pc.index(empty, True).as_py())}: empty image id; give every image an id")


def _label_lists(path: Path, tokens, owner: np.ndarray, labelled: np.ndarray, record: Record) -> pa.Array:
    """Label tokens and the row each belongs to -> sorted, deduplicated ``list<int32>`` per row.

    ``tokens`` is a list or an arrow array of label ids (ints or integer strings); rows
    where ``labelled`` is False become null. Vectorised: a million rows take well under a second.
    """
    n = len(labelled)
    values = None
    arr = tokens if isinstance(tokens, pa.Array) else None
    if arr is None:
        try:
            arr = pa.array(tokens)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arr = None
    if arr is not None and not arr.null_count and (pa.types.is_string(arr.type) or pa.types.is_integer(arr.type)
                            or pa.types.is_null(arr.type)):
        try:
            values = pc.cast(arr, pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            values = None
    if values is None:  # slow path: find the bad token and name its record
        items = tokens.to_pylist() if isinstance(tokens, pa.Array) else tokens
        values = np.empty(len(items), np.int64)
        for k, (tok, row) in enumerate(zip(items, owner)):
            values[k] = to_int(tok, lambda: f"{path}: {record(int(row))}: label {tok!r} is not an integer; "
                                             "labels are integer ids such as 66")
    if values.size and values.min() < 0:
        row = int(owner[int(np.argmax(values < 0))])
        raise UserError(f"{path}: {record(row)}: negative label id; labels are ids >= 0")
    keys = np.sort((owner.astype(np.int64, copy=False) << 32) | values)  # by row, then label
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if keys.size else keys  # drop repeats
    counts = np.bincount((keys >> 32).astype(np.int64), minlength=n)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array((keys & 0xFFFFFFFF).astype(np.int32)),
                                    type=LABEL_TYPE, mask=pa.array(~labelled))


# -- FGVC5 JSON ----------------------------------------------------------------

def _json_id(path: Path, where: str, value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"{path}: {where}: imageId {value!r} is not a string; ids look like \"1\"")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: building millions of dicts triggers it over and over
    (json.load of a 1M-entry train.json takes 3 to 5 times longer with it on). The objects made
    here hold no cycles, so reference counting still frees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_fgvc5(path: Path) -> pa.Table:
    with _gc_paused():
        return _read_fgvc5(path)


def is_gzip(path: Path) -> bool:
    """``train.json.gz``, ``urls.csv.gz``: read through gzip, streamed."""
    return Path(path).name.lower().endswith(".gz")


def _bad_gzip(path: Path, e: BaseException) -> UserError:
    return UserError(f"{path}: not a readable gzip file ({type(e).__name__}: {e}); "
                     "check the file or give it unpacked")


def _read_fgvc5(path: Path) -> pa.Table:
    try:
        with (gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); give an FGVC5 file such as train.json, "
                        "or a .csv/.tsv/.parquet index") from None
    except (OSError, EOFError, zlib.error) as e:
        if not is_gzip(path):
            raise
        raise _bad_gzip(path, e) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise UserError(f"{path}: no 'images' list at the top level; an FGVC5 index looks like "
                        '{"images": [{"url": "https://...", "imageId": "1"}], "annotations": [...]}')
    ids, urls, multi = [], [], False
    for i, img in enumerate(doc["images"]):
        iid, url = _entry(path, f"images[{i}]", img, "imageId", "url", 'every image needs {"url": ..., "imageId": ...}')
        if type(iid) is not str:
            iid = _json_id(path, f"images[{i}]", iid)
        if type(url) is not str:
            multi = True
            if not isinstance(url, list) or not all(isinstance(u, str) and u for u in url):
                raise UserError(f"{path}: images[{i}] (image {iid!r}): url must be a string or a list of "
                                "strings; fix that record")
        elif not url:
            raise UserError(f"{path}: images[{i}] (image {iid!r}): empty url; give every image a URL")
        ids.append(iid)
        urls.append(url)
    record = lambda i: f"images[{i}] (image {ids[i]!r})"  # noqa: E731
    id_array = pa.array(ids, pa.string())
    _check_ids(path, id_array, record)
    if multi:
        url_array = pa.array([[u] if type(u) is str else u for u in urls], URLS_TYPE)
    else:
        url_array = pa.ListArray.from_arrays(pa.array(np.arange(len(urls) + 1, dtype=np.int32)),
                                             pa.array(urls, pa.string()), type=URLS_TYPE)
    annotations = doc.get("annotations")
    labels = None if annotations is None else _fgvc5_labels(path, annotations, ids, id_array, record)
    return _build(path, id_array, url_array, labels, record)


def _entry(path: Path, where: str, entry, first: str, second: str, needs: str):
    """``(entry[first], entry[second])`` of one FGVC5 record; a ``UserError`` naming the missing key otherwise."""
    try:
        return entry[first], entry[second]
    except (KeyError, TypeError):
        key = second if isinstance(entry, dict) and first in entry else first
        raise UserError(f"{path}: {where}: no '{key}' key; {needs}") from None


def _fgvc5_labels(path: Path, annotations, ids: list, id_array: pa.Array, record: Record) -> pa.Array:
    if not isinstance(annotations, list):
        raise UserError(f"{path}: 'annotations' is not a list; it should look like "
                        '[{"labelId": ["95", "66"], "imageId": "1"}]')
    ann_ids, lengths, flat = [], [], []
    for j, ann in enumerate(annotations):
        aid, lab = _entry(path, f"annotations[{j}]", ann, "imageId", "labelId",
                          'every annotation needs {"labelId": [...], "imageId": ...}')
        if type(aid) is not str:
            aid = _json_id(path, f"annotations[{j}]", aid)
        if type(lab) is not list:
            lab = [lab]
        ann_ids.append(aid)
        lengths.append(len(lab))
        flat.extend(lab)
    found = pc.index_in(pa.array(ann_ids, pa.string()), value_set=id_array)  # row of each annotation's image
    if found.null_count:
        j = pc.index(found.is_null(), True).as_py()
        raise UserError(f"{path}: annotations[{j}]: image {ann_ids[j]!r} is not in 'images'; "
                        "add the image or remove the annotation")
    rows = found.to_numpy().astype(np.int64)
    counts = np.bincount(rows, minlength=len(ids))
    if counts.size and counts.max() > 1:
        first: Dict[int, int] = {}
        for j, row in enumerate(rows.tolist()):
            if row in first:
                raise UserError(f"{path}: annotations[{j}]: image {ids[row]!r} already has an annotation "
                                f"(annotations[{first[row]}]); merge them into one labelId list")
            first[row] = j
    labelled = counts > 0
    if not labelled.all():
        log.warning("%s: %d images have no annotation; their labels are null (unknown)",
                    path, int((~labelled).sum()))
    owner = np.repeat(rows, lengths)
    return _label_lists(path, flat, owner, labelled, record)


# -- CSV / TSV / Parquet -------------------------------------------------------

def read_csv_columns(path: Path, sep: str, what: str = ACCEPTED) -> Dict[str, list]:
    """Every column of a CSV/TSV as a list of strings (ids keep their leading zeros)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                         compression="gzip" if is_gzip(path) else None)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file (no header); give {what}") from None
    except (OSError, EOFError, zlib.error) as e:
        if not is_gzip(path):
            raise
        raise _bad_gzip(path, e) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot read it as {'TSV' if sep == chr(9) else 'CSV'} ({first}); "
                        "fix the file (quote fields that hold the separator)") from None
    return {str(c).strip(): df[c].tolist() for c in df.columns}


def read_parquet_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e}); give {ACCEPTED}") from None


def _split_urls(cell: Optional[str]) -> List[str]:
    return cell.replace("|", " ").split() if cell else []


def _from_columns(path: Path, cols: Dict[str, object], record: Record) -> pa.Table:
    """The shared part of the CSV and Parquet readers; ``cols`` values are lists or arrow arrays."""
    url_col = "urls" if "urls" in cols else "url"
    if "image_id" not in cols or url_col not in cols:
        raise UserError(f"{path}: needs columns image_id and url (or urls), found "
                        f"{', '.join(cols) or 'none'}; rename the columns")
    ids = cols["image_id"]
    if isinstance(ids, pa.Array):
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type) or pa.types.is_integer(ids.type)):
            raise UserError(f"{path}: image_id has type {ids.type}; store ids as strings")
        ids = ids.cast(pa.string()).to_pylist()
    ids = pa.array([i.strip() if i is not None else "" for i in ids], pa.string())
    _check_ids(path, ids, record)

    urls = cols[url_col]
    separated = True  # URLs split out of text cells (whitespace separates them)
    if isinstance(urls, pa.Array) and (pa.types.is_list(urls.type) or pa.types.is_large_list(urls.type)):
        separated = False
        bad = pc.fill_null(pc.equal(pc.utf8_length(pc.list_flatten(urls)), 0), True)
        if pc.any(bad).as_py():
            row = pc.list_parent_indices(urls)[pc.index(bad, True).as_py()].as_py()
            raise UserError(f"{path}: {record(row)}: null or empty URL in {url_col}; remove it")
        url_array = urls.cast(URLS_TYPE)
    else:
        if isinstance(urls, pa.Array):
            urls = urls.cast(pa.string()).to_pylist()
        url_array = pa.array([_split_urls(u) for u in urls], URLS_TYPE)

    labels = cols.get("labels")
    if labels is None:
        return _build(path, ids, url_array, None, record, separated)
    n = len(ids)
    if isinstance(labels, pa.Array) and (pa.types.is_list(labels.type) or pa.types.is_large_list(labels.type)):
        tokens = pc.list_flatten(labels)
        owner = pc.list_parent_indices(labels).to_numpy().astype(np.int64)
        labelled = labels.is_valid().to_numpy(zero_copy_only=False)
    else:
        if isinstance(labels, pa.Array):
            labels = labels.cast(pa.string()).to_pylist()
        tokens, lengths = [], []
        for cell in labels:
            parts = cell.split() if cell else []
            tokens.extend(parts)
            lengths.append(len(parts))
        owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
        labelled = np.array([cell is not None for cell in labels], bool)
    return _build(path, ids, url_array, _label_lists(path, tokens, owner, labelled, record), record, separated)


def read_delimited(path: Path, sep: str) -> pa.Table:
    cols = read_csv_columns(path, sep)
    return _from_columns(path, cols, lambda i: f"row {i + 1} (image {cols['image_id'][i].strip()!r})")


def read_parquet(path: Path) -> pa.Table:
    table = read_parquet_table(path)
    cols = {name: table[name].combine_chunks() for name in table.column_names}
    ids = cols.get("image_id")
    return _from_columns(path, cols, lambda i: f"row {i + 1} (image {ids[i].as_py()!r})")
