"""The URLs of an index, checked when it is read (``index_formats._build``).

Rules (docs/inputs.md, "URLs"):
- every URL needs a scheme (``https://``, ``http://``, ``file://``; others are kept
  and fail at fetch time as ``bad_url``);
- a bare absolute local path (``/data/img/1.jpg``) becomes a ``file://`` URL;
  anything else without a scheme (``img/1.jpg``, ``www.example.com/1.jpg``) is an
  error naming the record;
- where each URL is its own string (FGVC5 JSON, a Parquet list column) whitespace
  around a URL is dropped and whitespace inside it is percent-encoded (``%20``):
  that is unambiguous there. In a CSV/TSV cell (or a Parquet string column) whitespace
  separates URLs, so a piece that is not a URL there is an error that says so.

Vectorised: one regular-expression pass over all URLs; only the few that need
a fix are touched in Python.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import UserError

SCHEME_RE = r"^[A-Za-z][A-Za-z0-9+.-]*:"
SPACE_RE = re.compile(r"\s")
Record = Callable[[int], str]


def _encode_spaces(url: str) -> str:
    return SPACE_RE.sub(lambda m: quote(m.group()), url)


def _fix(url: str, separated: bool, where: Callable[[], str]) -> str:
    """One URL that has whitespace or no scheme -> the URL to store, or a UserError."""
    url = url.strip()
    if re.match(SCHEME_RE, url):
        return _encode_spaces(url)
    if url.startswith("/"):
        return Path(url).as_uri()  # an absolute local path: a percent-encoded file:// URL
    if separated:
        raise UserError(f"{where()}: {url!r} is not a URL (no scheme such as https://); the URLs of a cell are "
                        "separated by spaces or '|', so write a space inside a URL as %20, and give a local "
                        "file as an absolute path or a file:// URL")
    raise UserError(f"{where()}: {url!r} is not a URL (no scheme such as https://); give a full URL, or for a "
                    "local file an absolute path or a file:// URL")


def check_urls(path: Path, urls: pa.Array, record: Record, separated: bool) -> pa.Array:
    """``urls`` (``list<string>``, one list per record) checked and normalised; see the module doc.

    ``separated``: the URLs came from cells split on whitespace (CSV/TSV), so none holds any."""
    flat = pc.list_flatten(urls)
    if len(flat) == 0:
        return urls
    # one pass: a scheme, and (where each URL is its own string) no whitespace anywhere
    bad = pc.fill_null(pc.invert(pc.match_substring_regex(flat, SCHEME_RE if separated else SCHEME_RE + r"\S*$")),
                       False)
    if not pc.any(bad).as_py():
        return urls
    positions = pc.indices_nonzero(bad).to_pylist()
    parents = pc.list_parent_indices(urls)
    values = flat.to_pylist()
    for k in positions:
        row = parents[k].as_py()
        values[k] = _fix(values[k], separated, lambda row=row: f"{path}: {record(row)}")
    lists, start = [], 0
    lengths = pc.list_value_length(urls).to_pylist()
    for n in lengths:
        n = n or 0
        lists.append(values[start:start + n])
        start += n
    return pa.array(lists, urls.type)

