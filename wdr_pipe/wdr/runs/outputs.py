"""Paths a user names for a command to write: checked before any work, so that no write destroys.

``check_outputs({"--out": PATH, "--probs": PATH})`` (``predict``, and the ``run``
file's ``[predict]`` at plan time) refuses, with one line naming the option:

- an output inside a store or a run folder (the path itself or any folder above
  it), or inside a folder the caller reserves (a ``run`` file's store and run
  folders, which may not exist yet): it would overwrite what they hold;
- two outputs on one path (one would silently replace the other);
- a folder, or a parent that is a file;
- a parent folder whose own parent does not exist: only the output's own folder
  is created, never folders from the root down.

``check_run_out(path, flag)`` is the rule for an output *folder* (``train --out``,
``ensemble --out``): not a store, and not inside a store or another run folder.
Paths are resolved first (``~``, ``..``, symbolic links), so no spelling gets round it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

from ...cache import is_store
from ...errors import UserError
from .folder import RunFolder

Reserved = Sequence[Tuple[Path, str]]  # (folder, what it is: "the store of this run file")


def _resolve(path) -> Path:
    return Path(str(path)).expanduser().resolve()


def holder(path: Path, folders: Iterable[Path]) -> Optional[str]:
    """What holds ``path`` among ``folders`` (each checked: a store, a run folder), in words."""
    for folder in folders:
        if is_store(folder):
            return f"the store {folder}"
        if RunFolder(folder).is_run():
            return f"the run folder {folder}"
    return None


def _reserved_holder(path: Path, reserved: Reserved) -> Optional[str]:
    for folder, what in reserved:
        folder = _resolve(folder)
        if path == folder or folder in path.parents:
            return f"{what} {folder}"
    return None


def check_outputs(outputs: Dict[str, Optional[str]], reserved: Reserved = ()) -> Dict[str, Path]:
    """``{flag: resolved path}`` of the outputs given (None ones left out); a ``UserError`` otherwise."""
    seen: Dict[Path, str] = {}
    out: Dict[str, Path] = {}
    for flag, given in outputs.items():
        if given is None:
            continue
        path = _resolve(given)
        if path in seen:
            raise UserError(f"{seen[path]} and {flag} are the same file {path}; give each its own path")
        seen[path] = flag
        where = holder(path, [path, *path.parents]) or _reserved_holder(path, reserved)
        if where:
            raise UserError(f"{flag} {given}: inside {where}, whose files it would overwrite; write it elsewhere "
                            "(e.g. in the current folder)")
        if path.is_dir():
            raise UserError(f"{flag} {given}: is a folder; pass a file name such as submission.csv")
        parent = path.parent
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{flag} {given}: {parent} is a file, not a folder; pass another path")
        if not parent.exists() and not parent.parent.is_dir():
            raise UserError(f"{flag} {given}: the folder {parent.parent} does not exist; create it first (only the "
                            "output's own folder is made)")
        out[flag] = path
    return out


def check_run_out(path, flag: str = "--out", reserved: Reserved = ()) -> Path:
    """The resolved run folder ``path`` for a command to write; a ``UserError`` when it is a store or inside a
    store or another run folder (or a folder ``reserved`` names)."""
    root = _resolve(path)
    where = holder(root, [root]) if is_store(root) else holder(root, root.parents)
    where = where or _reserved_holder(root.parent, reserved)
    if where:
        raise UserError(f"{flag} {path}: inside {where}; pass a folder of its own (e.g. runs/NAME)")
    return root


def prepare(path: Path) -> Path:
    """Create ``path``'s own folder if it is missing (its parent exists: ``check_outputs``); returns ``path``."""
    path.parent.mkdir(exist_ok=True)
    return path


__all__ = ["check_outputs", "check_run_out", "holder", "prepare"]
