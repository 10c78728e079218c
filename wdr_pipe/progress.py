"""The one progress hook of the library.

Stages never print. They call ``emit(hook, Progress(...))`` with running totals;
the CLI renders that as a progress bar, tests can record it, and ``None``
means "nobody is listening".
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

log = logging.getLogger("wdr_pipe")


@dataclasses.dataclass
class Progress:
    """Running totals of one stage run (always totals, never deltas)."""

    stage: str
    done: int = 0            # items finished (ok + failed + skipped)
    total: Optional[int] = None
    ok: int = 0
    failed: int = 0
    nbytes: int = 0
    message: str = ""


Hook = Optional[Callable[[Progress], None]]


def emit(hook: Hook, progress: Progress) -> None:
    """Send ``progress`` to ``hook`` if there is one; a broken hook never kills a stage."""
    if hook is None:
        return
    try:
        hook(progress)
    except Exception:  # pragma: no cover - a display problem must not lose work
        log.exception("progress hook failed")
