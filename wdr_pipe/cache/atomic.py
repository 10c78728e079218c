"""Atomic writes: a temporary file in the same folder, fsync, then rename.

A killed run leaves at most a ``.tmp-*`` file behind, never a half-written
file under the final name. Running out of disk becomes a ``DiskFull`` (a
``UserError``) that names the path. Files are created as ``open`` creates
them (mode 0666 less the umask), so colleagues and dask workers running as
another user can read a store on a shared file system when the umask allows it.

A shard (several files and a commit marker) is replaced, never deleted first:
``staged_path`` writes each new file beside the old one (``staging`` collects
several and removes them all if one fails), and ``publish`` renames them over
the old files only once all of them are complete, then writes the commit
marker. Until then the previous version stays committed and readable.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Dict, Iterator

from ..errors import DiskFull

TMP_PREFIX = ".tmp-"


def _new_temp(path: Path) -> Path:
    """Create an empty, unique temporary file beside ``path`` with the umask's permissions."""
    for _ in range(100):
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))  # pragma: no cover


def _disk_full(path: Path, e: OSError) -> None:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFull(
            f"{path}: no space left on device; free some space and run the same command again "
            "(finished shards are kept)"
        ) from e


@contextlib.contextmanager
def staged_path(path: Path) -> Iterator[Path]:
    """Yield a new temporary path beside ``path``; once the block has written it, it is
    fsynced and left in place for ``publish``. Removed again if the block fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = _new_temp(path)
    except OSError as e:
        _disk_full(path, e)
        raise
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        _disk_full(path, e)
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    with staged_path(path) as tmp:
        yield tmp
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staging() -> Iterator[Dict[Path, Path]]:
    """A dict for the block to fill with ``{final path: staged temporary}`` (``stage_parquet``); if
    the block fails, every file staged so far is removed. Then ``publish`` puts them in place."""
    staged: Dict[Path, Path] = {}
    try:
        yield staged
    except BaseException:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)
        raise


def publish(staged: Dict[Path, Path], marker: Path, marker_text: str) -> None:
    """Put complete staged files (``{final path: temporary path}``) in place, then commit.

    The old commit marker goes first, so a reader never pairs it with new files; the
    window between that and the new marker is a few renames, and a run killed inside it
    leaves an uncommitted shard that the next run redoes.
    """
    try:
        Path(marker).unlink(missing_ok=True)
        for final, tmp in staged.items():
            os.replace(tmp, final)
    except BaseException:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)
        raise
    write_text_atomic(Path(marker), marker_text)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_parquet_atomic(table, path: Path, **kwargs) -> None:
    """Write a pyarrow Table to ``path`` atomically."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def stage_parquet(table, path: Path, **kwargs) -> Path:
    """Write a pyarrow Table to a temporary file beside ``path`` (for ``publish``); returns it."""
    import pyarrow.parquet as pq

    with staged_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return tmp


def remove_stale_tmp(folder: Path) -> int:
    """Delete temporary files a killed run left in ``folder``; returns how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(TMP_PREFIX + "*"):
            p.unlink(missing_ok=True)
            n += 1
    return n
