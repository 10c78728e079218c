"""A stage's ``StageResult`` written beside its output as ``result.json`` (and read back)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..result import StageResult
from .jsonfile import read_json, write_json

RESULT_FILE = "result.json"


def result_path(folder) -> Path:
    """``FOLDER/result.json``: where a stage's (or a run's) result is written, last."""
    return Path(folder) / RESULT_FILE


def write_result(folder, result: StageResult) -> Path:
    """Write ``folder/result.json`` atomically; returns its path."""
    path = result_path(folder)
    write_json(path, result.to_dict())
    return path


def read_result(folder) -> Optional[StageResult]:
    """The ``StageResult`` written in ``folder``, or ``None`` when there is none (or it is unreadable)."""
    try:
        doc = read_json(result_path(folder), missing_ok=True)
        return None if doc is None else StageResult.from_dict(doc)
    except (UserError, TypeError):
        return None
