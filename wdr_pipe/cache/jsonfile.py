"""The one way JSON files are read and written: stores, run folders, results, thresholds, manifests.

``read_json(path, fix)`` returns the document (``None`` for a missing file with
``missing_ok``), or raises a ``UserError`` that
names the file and ``fix`` (what the user does about a missing, unreadable or
non-object file). ``write_json(path, doc)`` writes it atomically (temp file,
fsync, rename), keys sorted and indented, numpy scalars and arrays as plain
numbers and lists; NaN and infinities become ``null`` so every file is strict
JSON that any reader accepts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import UserError

DEFAULT_FIX = "restore it, or run the command that wrote it again"


def read_json(path, fix: str = DEFAULT_FIX, missing_ok: bool = False) -> Optional[Dict[str, Any]]:
    """The JSON object in ``path``; a ``UserError`` naming the file and ``fix`` otherwise
    (``missing_ok``: ``None`` for a file that is not there)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise UserError(f"{path}: missing; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:200]}); {fix}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a JSON object; {fix}")
    return doc


def json_text(doc: Any, indent: int = 2) -> str:
    """``doc`` as strict JSON text (sorted keys, NaN/inf as null, numpy values as plain ones)."""
    return json.dumps(_strict(doc), indent=indent, sort_keys=True, allow_nan=False, default=_plain) + "\n"


def write_json(path, doc: Any) -> None:
    """``doc`` written to ``path`` atomically as strict JSON."""
    from .atomic import write_text_atomic

    write_text_atomic(Path(path), json_text(doc))


def _plain(v: Any) -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None:
        if isinstance(v, np.generic):
            return _strict(v.item())
        if isinstance(v, np.ndarray):
            return _strict(v.tolist())
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    return str(v)


def _strict(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


__all__ = ["json_text", "read_json", "write_json"]
