"""This process among torchrun's (``RANK`` / ``WORLD_SIZE``): ``Dist``, and the one device choice, ``pick_device``.

``Dist().start(device)`` picks the device and, under torchrun, opens the
process group: ``cpu:gloo,cuda:nccl`` when the device is CUDA (object
collectives stay on the CPU), ``gloo`` otherwise. A group the caller already
started (``wdr-pipe run`` starts one before its training steps) is used as it
is and left open by ``stop``. Training uses it for DDP and for ``gather``,
``broadcast``, ``mean``, ``sync_buffers`` and ``barrier``.

``on_main(fn, step)`` runs ``fn`` on rank 0 alone; every rank gets its value,
or its error: rank 0 raises its own, the others a ``UserError`` with the same
message (a user's mistake) or ``StepFailed`` (anything else). A rank waiting
for rank 0 sits in a broadcast on a gloo group of its own, whose timeout is
``WAIT`` (7 days), not the 30-minute default of the training group: a data
stage, or the embeddings a ``--deep fixed`` run computes first, may take
hours. What ends a wait sooner:

- rank 0's step ends: its result, or its error;
- rank 0's process ends (an error outside a step, a crash, a kill): gloo sees the connection
  closed at once and the wait raises; torchrun (no restarts, the default) also stops every other
  rank (SIGTERM, then SIGKILL 30 s later) as soon as one exits, within its monitor interval
  (0.1 s by default);
- only a rank 0 that is alive and stuck keeps the others waiting, up to ``WAIT``.

torch is imported when a process group or a device is asked for, not before: ``wdr-pipe run`` of
the data stages alone never loads it.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
from typing import Any, Callable, List, Mapping, Optional, Tuple

from ..errors import UserError
from .checks import check_device

log = logging.getLogger("wdr_pipe")

WAIT = datetime.timedelta(days=7)           # the longest a rank waits for rank 0's step
FAREWELL = datetime.timedelta(seconds=30)   # the longest a failing rank waits for the others to say so


def pick_device(device: str = "auto", local: Optional[int] = None):
    """``auto``: CUDA when there is one, else the CPU; a ``UserError`` for CUDA where there is none.
    ``local``: under torchrun, plain ``cuda`` (or ``auto``) is this process's GPU, ``cuda:LOCAL_RANK``."""
    import torch

    check_device(device)
    cuda = torch.cuda.is_available()
    want = ("cuda" if cuda else "cpu") if device == "auto" else str(device)
    if want.startswith("cuda") and not cuda:
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu (or auto)")
    if want == "cuda" and local is not None:
        torch.cuda.set_device(local)
        want = f"cuda:{local}"
    try:
        return torch.device(want)
    except RuntimeError:
        raise UserError(f"--device {device}: use auto, cpu, cuda or cuda:N") from None


class StepFailed(Exception):
    """Rank 0's step ``step`` raised something other than a ``UserError``; raised on the ranks that waited
    for it, with its type and message."""

    def __init__(self, step: str, kind: str, message: str):
        super().__init__(message)
        self.step, self.kind, self.message = step, kind, message


class Dist:
    """This process's rank, the number of processes and, once started, its device and process groups."""

    def __init__(self, env: Optional[Mapping[str, str]] = None):
        env = os.environ if env is None else env
        self.world = int(env.get("WORLD_SIZE", "1")) if "RANK" in env else 1
        self.rank = int(env["RANK"]) if self.world > 1 else 0
        self.local = int(env.get("LOCAL_RANK", "0"))
        self.device = None           # set by ``start``
        self.waits = None            # the gloo group of ``on_main``'s waits
        self.owns_default = False    # the default group was started here (and is ended in ``stop``)
        self.failed_together = False  # a step's error reached every rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def share(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
        """``(rank, world_size)`` of a loader: as given, else this process's place in the started group."""
        if rank is None or world_size is None:
            import torch.distributed as td

            on = td.is_available() and td.is_initialized()
            rank = (td.get_rank() if on else 0) if rank is None else rank
            world_size = (td.get_world_size() if on else 1) if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise UserError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        return int(rank), int(world_size)

    def start(self, device: Optional[str] = "auto") -> "Dist":
        """Pick the device (``None``: only where there are several processes) and open the process groups;
        every rank calls it."""
        if self.world == 1:
            if device is not None:
                self.device = pick_device(device)
            return self
        import torch.distributed as td

        self.device = pick_device(device or "auto", local=self.local)
        if not td.is_initialized():
            td.init_process_group(backend="cpu:gloo,cuda:nccl" if self.device.type == "cuda" else "gloo")
            self.owns_default = True
        if self.waits is None:
            self.waits = td.new_group(backend="gloo", timeout=WAIT)
        log.debug("rank %d of %d: process groups open (%s)", self.rank, self.world, td.get_backend())
        return self

    # -- rank 0 alone ------------------------------------------------------------------------
    def on_main(self, fn: Callable[[], Any], step: str = "") -> Any:
        """``fn()`` on rank 0; its value on every rank, or its error (module doc)."""
        if self.world == 1:
            return fn()
        box: List[Any] = [None, None]
        if self.main:
            try:
                box[0] = fn()
            except Exception as e:
                self.failed_together = True
                box[1] = (type(e).__name__, str(e), isinstance(e, UserError))
                try:
                    self._broadcast_wait(box, step)
                except UserError:
                    pass  # the others are gone; this rank's own error is the one to show
                raise
        self._broadcast_wait(box, step)
        if box[1] is not None:
            self.failed_together = True
            kind, message, user = box[1]
            raise UserError(message) if user else StepFailed(step, kind, message)
        return box[0]

    def _broadcast_wait(self, box: List[Any], step: str) -> None:
        import torch.distributed as td

        try:
            td.broadcast_object_list(box, src=0, group=self.waits)
        except RuntimeError as e:
            first = re.sub(r"^\[[^\]]*\]\s*", "", (str(e).strip().splitlines() or [""])[0])  # gloo's source place
            first = first.split(". ")[0][:200]
            who = "the other ranks" if self.main else "rank 0"
            raise UserError(f"rank {self.rank} of {self.world}: lost {who}{f' at step {step}' if step else ''} "
                            f"({first}); {'their' if self.main else 'its'} own output and torchrun's summary "
                            "say why") from None

    def farewell(self) -> None:
        """After a step's error reached every rank, and this rank has said so: wait (``FAREWELL`` at
        most) until every rank has said so too, for as soon as one rank ends torchrun stops the rest
        with SIGTERM (its summary may list those as stopped by SIGTERM: their line is out by then)."""
        if self.world == 1 or self.waits is None or not self.failed_together:
            return
        import torch.distributed as td

        try:
            td.monitored_barrier(group=self.waits, timeout=FAREWELL, wait_all_ranks=True)
        except RuntimeError as e:
            log.debug("rank %d: not every rank got this far: %s", self.rank, (str(e).splitlines() or [""])[0])

    # -- every rank together ------------------------------------------------------------------
    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as td

        out: List[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, t):
        if self.world == 1:
            return t
        import torch.distributed as td

        t = t.detach().clone()
        td.all_reduce(t)
        return t / self.world

    def sync_buffers(self, *models) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere: each rank's last batches moved its own."""
        if self.world > 1:
            import torch.distributed as td

            for model in models:
                for b in model.buffers():
                    td.broadcast(b, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def stop(self) -> None:
        """Close what ``start`` opened."""
        if self.waits is None:
            return
        import torch.distributed as td

        if td.is_initialized():
            if self.owns_default:
                td.destroy_process_group()
            else:
                td.destroy_process_group(self.waits)
        self.waits = None


__all__ = ["Dist", "FAREWELL", "StepFailed", "WAIT", "pick_device"]
