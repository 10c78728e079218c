"""A damaged store, named: which file does not read, and the command that writes it again.

Readers trust a committed store (a commit marker promises its files). When a file
was damaged or removed since, pyarrow's error names neither the file nor the fix
("Parquet magic bytes not found in footer", a bare ``FileNotFoundError``). The
CLI watches which stores a command opens (``store.watching``; a ``Store`` notes itself),
and when the command fails with an error that is not a ``UserError`` it asks
``damaged_file`` to look at those stores: the first file that a marker promises
but that is missing, or whose Parquet head or footer does not read, comes back
as one line with the fix (the ``--rebuild`` of the stage that wrote it, or what
to remove so that the stage writes it again). Footers only: cheap, even for a
large store, and run only after a failure.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import pyarrow.parquet as pq

from .store import LABEL_STATS_TABLES, Store, failures_path

MAGIC = b"PAR1"


def parquet_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a readable Parquet file (missing, bad head or footer); None when it reads."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head != MAGIC:
            return "not a Parquet file: its first bytes are not PAR1"
        pq.read_metadata(path)
        return None
    except FileNotFoundError:
        return "missing"
    except Exception as e:  # OSError, ArrowInvalid: the footer does not parse
        return f"unreadable ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})"


def _markers(folder: Path):
    return sorted(folder.glob("part-*.stats.json")) if folder.is_dir() else []


def damaged_file(roots: List[Path]) -> Optional[str]:
    """One line naming the first damaged file of the stores at ``roots`` and its fix; None when all read."""
    for root in roots:
        try:
            found = _first_damaged(Store(root))
        except Exception:  # pragma: no cover (a store too broken to list: the caller reports the error itself)
            found = None
        if found:
            return found
    return None


def _checks(store) -> List[Tuple[Path, str]]:
    """(file, the fix when it does not read) of every Parquet file the store's markers promise."""
    root = store.root
    again = f"run the same 'wdr-pipe fetch ... --store {root}' again"
    checks = [(p, f"remove it and {again} with its index") for p in sorted((root / "index").glob("*.parquet"))]
    if store.label_map_path.exists():
        checks.append((store.label_map_path, f"remove it and {again} with --label-map FILE"))
    for split_dir in sorted(p for p in store.images_root.glob("*") if p.is_dir()):
        for marker in _markers(split_dir):
            shard = marker.with_name(marker.name.replace(".stats.json", ".parquet"))
            fix = f"remove {shard.name} and {marker.name}, then {again}: it fetches that shard again"
            checks += [(shard, fix), (failures_path(shard), fix)]
    for family in (store.features, store.embeddings):
        for key in family.keys():
            for split_dir in sorted(p for p in family.root(key).iterdir() if p.is_dir()):
                fix = (f"run '{family.fix(split_dir.name)} --rebuild' with the settings of "
                       f"{family.config_path(key)} (they make key {key})")
                checks += [(m.with_name(m.name.replace(".stats.json", ".parquet")), fix) for m in _markers(split_dir)]
    for split in store.label_stats_splits():
        if store.label_stats_config_path(split).exists():
            fix = (f"remove {store.label_stats_config_path(split)} and run 'wdr-pipe stats --store {root} "
                   f"--split {split}'")
            checks += [(store.label_stats_file(split, name), fix) for name in LABEL_STATS_TABLES]
    return checks


def _first_damaged(store) -> Optional[str]:
    for path, fix in _checks(store):
        problem = parquet_problem(path)
        if problem:
            return f"{path}: {problem}; the store {store.root} is damaged there: {fix}"
    return None


__all__ = ["damaged_file", "parquet_problem"]
