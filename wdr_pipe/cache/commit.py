"""The commit marker of a shard: ``part-NNNNN.stats.json``, written last, after every file of the shard.

A shard is done when its marker exists; the marker's JSON says what the shard holds (rows,
counts) and, for a shard derived from an image shard (features, embeddings), which version of
that image shard it was computed from (``source``: ``shard_identity``). The one rule of a derived
shard: it is *current* when its marker names its image shard as that is now (``is_current``);
anything else (no marker, no ``source``, another version) is recomputed by its stage and refused
by readers. (The marker's file name keeps its historical ``.stats.json``; in code it is the
commit marker, never the label statistics of ``stats/``.)
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Dict, Optional

from ..errors import UserError
from .atomic import publish
from .jsonfile import json_text, read_json

log = logging.getLogger("wdr_pipe")

MARKER_SUFFIX = ".stats.json"


def commit_path(shard) -> Path:
    """``part-00001.parquet`` -> ``part-00001.stats.json``, the shard's commit marker (written last)."""
    shard = Path(shard)
    return shard.with_name(shard.name[: -len(".parquet")] + MARKER_SUFFIX)


def read_commit(shard) -> Optional[dict]:
    """The commit marker of ``shard`` as a dict; ``None`` when there is none or it is unreadable
    (then the shard counts as not done and is redone)."""
    marker = commit_path(shard)
    try:
        return read_json(marker, missing_ok=True)
    except UserError:
        log.warning("%s: unreadable commit marker; the shard will be redone", marker)
        return None


def commit(staged: Dict[Path, Path], shard, marker: dict) -> None:
    """Put the staged files of ``shard`` (``{final path: temporary path}``) in place, then write its
    commit marker ``marker`` (``atomic.publish``)."""
    publish(staged, commit_path(shard), json_text(marker))


def shard_identity(image_shard) -> Dict[str, object]:
    """What a derived shard was computed from: the image shard's name, size and commit marker digest."""
    image_shard = Path(image_shard)
    digest = hashlib.sha256(commit_path(image_shard).read_bytes()).hexdigest()
    return {"shard": image_shard.name, "bytes": image_shard.stat().st_size, "stats_sha256": digest}


def is_current(marker: Optional[dict], image_shard) -> bool:
    """A derived shard's commit marker exists and names ``image_shard`` as it is now."""
    return marker is not None and marker.get("source") == shard_identity(image_shard)


__all__ = ["MARKER_SUFFIX", "commit", "commit_path", "is_current", "read_commit", "shard_identity"]
