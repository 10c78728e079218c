"""``wdr-pipe convert-checkpoint RUN``: an earlier wdr-pipe's pickled files of a run -> today's safe formats.

Before checkpoints were safetensors files, a run kept ``checkpoints/last.pt`` and
``best.pt`` (``torch.save`` pickles) and an ensemble its ``stacker.npz``. Every
other command refuses those (``RunFolder.check_format``). This is the one place
that reads them, and only when asked:

- a ``*.pt`` checkpoint is read by torch's restricted unpickler
  (``torch.load(weights_only=True)``) with numpy's array types allowed (the
  numpy random state), which refuses any other callable; it still parses a
  pickle, so the conversion **trusts the file**: convert only runs you trust.
  It is written again by ``save_checkpoint`` (safetensors), read back, checked
  to hold the same weights, and only then is the pickle removed.
- ``stacker.npz`` is read with ``np.load`` (object arrays, which would need
  pickle, refused) and written as ``stacker.safetensors``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ...errors import UserError, first_line
from .checkpoint import SUFFIX, load_checkpoint, save_checkpoint, state_digest
from .folder import STACKER_KEYS, RunFolder

log = logging.getLogger("wdr_pipe")


def _numpy_globals() -> List[Any]:
    """The numpy names a pickled numpy random state needs: an array, its dtype and dtype class."""
    import numpy as np

    reconstruct = getattr(np, "_core", np.core).multiarray._reconstruct
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), type(np.dtype(np.float64))]


def read_trusted_pickle(path: Path) -> Dict[str, Any]:
    """A ``torch.save`` checkpoint through torch's restricted unpickler (tensors, containers, numbers,
    numpy arrays); anything else in it is refused, not run."""
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for a callable it does not allow, or a damaged file
        raise UserError(f"{path}: not a checkpoint of wdr-pipe ({type(e).__name__}: {first_line(e, 200)}); "
                        "it was not converted: delete it, or train the run again") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of wdr-pipe (no model weights in it); delete it")
    return ckpt


def convert_checkpoint(old: Path) -> Path:
    """``checkpoints/NAME.pt`` -> ``checkpoints/NAME.safetensors`` (checked), then the pickle removed."""
    new = old.with_suffix(SUFFIX)
    ckpt = read_trusted_pickle(old)
    save_checkpoint(new, ckpt)
    if state_digest(load_checkpoint(new)["model"]) != state_digest(ckpt["model"]):  # pragma: no cover
        new.unlink()
        raise UserError(f"{old}: its weights did not come back equal from {new.name}; left as it was")
    old.unlink()
    return new


def convert_stacker(run: RunFolder, old: Path) -> Path:
    """``stacker.npz`` -> ``stacker.safetensors`` (numbers only: an object array is refused)."""
    import numpy as np

    try:
        with np.load(old, allow_pickle=False) as z:
            tree = {k: np.asarray(z[k]) for k in STACKER_KEYS}
    except (ValueError, KeyError, OSError) as e:  # object arrays need pickle; a damaged or foreign file
        raise UserError(f"{old}: not a stacker of wdr-pipe ({first_line(e, 200)}); make the ensemble again "
                        "('wdr-pipe ensemble ... --out NEW')") from None
    run.write_stacker(tree)
    old.unlink()
    return run.stacker


def convert_run(path) -> List[Tuple[Path, Path]]:
    """Convert every pickled file of the run folder at ``path``; returns ``(old, new)`` pairs."""
    root = Path(path).expanduser().resolve()
    run = RunFolder(root)
    if not run.is_run():
        raise UserError(f"RUN {path}: not a wdr-pipe run folder (no config.json of a run); pass the --out folder "
                        "of 'wdr-pipe train' or 'wdr-pipe ensemble'")
    done = []
    for old in run.pickles():
        if old.with_suffix(SUFFIX).exists():
            raise UserError(f"{old}: {old.with_suffix(SUFFIX).name} exists beside it; keep one of the two "
                            "(delete the other) and convert again")
        new = convert_stacker(run, old) if old.suffix == ".npz" else convert_checkpoint(old)
        log.debug("%s -> %s", old, new.name)
        done.append((old, new))
    return done


__all__ = ["convert_checkpoint", "convert_run", "convert_stacker", "read_trusted_pickle"]
