"""Config hashing: a frozen dataclass, hashed, is a stage's cache key.

The key covers every field of the config plus the dataclass name, so two
stages never share a key and any change of a setting gives a new key. A stage's
``config.json`` is ``config_doc`` written by ``jsonfile.write_json``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any


def config_dict(cfg: Any) -> dict:
    """The config as a plain, JSON-ready dict with its type name."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass config, got {type(cfg).__name__}")
    return {"type": type(cfg).__name__, **dataclasses.asdict(cfg)}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_key(cfg: Any, *extra: Any, length: int = 12) -> str:
    """Short stable hash of ``cfg`` (and of any ``extra`` inputs, such as input digests)."""
    payload = canonical_json([config_dict(cfg), list(extra)])
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def config_doc(cfg: Any, **more: Any) -> dict:
    """The readable config with its key (and ``more`` fields): what a stage's ``config.json`` holds."""
    return {"key": config_key(cfg), "config": config_dict(cfg), **more}


def write_config(path: Path, cfg: Any, **more: Any) -> None:
    """Write the readable config (with its key) beside a stage's output, atomically."""
    from .jsonfile import write_json

    write_json(Path(path), config_doc(cfg, **more))

