"""A stage's ``StageResult`` written beside its output as ``result.json`` (and read back)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..result import StageResult
from .atomic import write_text_atomic

RESULT_FILE = "result.json"


def write_result(folder: Path, result: StageResult) -> Path:
    """Write ``folder/result.json`` atomically; returns its path."""
    path = Path(folder) / RESULT_FILE
    write_text_atomic(path, json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_result(folder: Path) -> Optional[StageResult]:
    """The ``StageResult`` written in ``folder``, or ``None`` when there is none (or it is unreadable)."""
    try:
        return StageResult.from_dict(json.loads((Path(folder) / RESULT_FILE).read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError, TypeError):
        return None
