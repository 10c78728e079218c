"""An OS file lock that one process holds while it writes a folder (a run folder, a stage's output).

``FileLock(path, what)``: ``fcntl.flock`` on ``path``, taken without waiting. The
kernel drops it when the holder ends, however it ends (a SIGKILL included), so a
killed run never leaves a folder locked. The holder writes its pid, host, command
and start time into the file; a second process is refused with one line that
names them (``Locked``, a ``UserError``). On release the holder removes the file
while it still holds the lock; a process that locked a file that was removed
meanwhile (its inode no longer at ``path``) tries again, so two processes never
both think they hold it. On NFS, Linux maps ``flock`` to POSIX locks, which the
server keeps across hosts.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import UserError


class Locked(UserError):
    """Another process holds the lock."""


class FileLock:
    def __init__(self, path, what: str, fix: str = "wait for it to finish, or stop it"):
        self.path, self.what, self.fix = Path(path), what, fix
        self.fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def holder(self) -> Dict[str, Any]:
        """What the holder wrote into the lock file ({} while it has not yet)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "FileLock":
        """Take the lock now or raise ``Locked`` naming who holds it; returns self."""
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Locked(self._refusal()) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                me = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                      "command": " ".join(sys.argv[:6])[:300], "since": time.strftime("%Y-%m-%d %H:%M:%S")}
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(me).encode())
                return self
            os.close(fd)  # the holder released and removed it between our open and our lock: again
        raise Locked(self._refusal())  # pragma: no cover

    def _refusal(self) -> str:
        h = self.holder()
        who = (f"pid {h['pid']} on {h.get('host', '?')} ({h.get('command') or h.get('what')}, since {h.get('since')})"
               if h.get("pid") else "another process")
        return f"{self.path.parent}: {self.what} is already running there, by {who}; {self.fix}"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still held: nobody can lock the old inode in between
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["FileLock", "Locked"]
