"""The processes of a ``run`` under torchrun: rank 0 runs the data and evaluation steps alone, every
rank runs each training step (DDP), and the others learn each of rank 0's outcomes.

``Ranks.start`` opens the process group the training steps reuse (gloo for CPU tensors, plus nccl
for CUDA ones when there is a GPU; ``trainsetup.Dist`` takes a group that is already there and
leaves it open) and a gloo group of its own for the waits. A rank waiting for rank 0 sits in a
broadcast on that group, whose timeout is ``WAIT`` (7 days), not the 30-minute default of the
training group: a data stage may take hours. What ends a wait sooner:

- rank 0's step ends: its result, or its error (every rank raises it: ``StepFailed``);
- rank 0's process ends (an error outside a step, a crash, a kill): gloo sees the connection
  closed at once and the wait raises; torchrun (no restarts, the default) also stops every other
  rank (SIGTERM, then SIGKILL 30 s later) as soon as one exits, within its monitor interval
  (0.1 s by default);
- only a rank 0 that is alive and stuck keeps the others waiting, up to ``WAIT``.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
from typing import Any, Callable, List, Mapping, Optional

from ..errors import UserError

log = logging.getLogger("wdr_pipe")

WAIT = datetime.timedelta(days=7)           # the longest a rank waits for rank 0's step
FAREWELL = datetime.timedelta(seconds=30)   # the longest a failing rank waits for the others to say so


class StepFailed(Exception):
    """Rank 0's step ``step`` raised; raised on the ranks that waited for it, with its type and message."""

    def __init__(self, step: str, kind: str, message: str, user: bool):
        super().__init__(message)
        self.step, self.kind, self.message, self.user = step, kind, message, user


class Ranks:
    """This process's rank and the number of processes (``RANK`` / ``WORLD_SIZE``, set by torchrun)."""

    def __init__(self, env: Optional[Mapping[str, str]] = None):
        env = os.environ if env is None else env
        self.world = int(env.get("WORLD_SIZE", "1")) if "RANK" in env else 1
        self.rank = int(env["RANK"]) if self.world > 1 else 0
        self.local = int(env.get("LOCAL_RANK", "0"))
        self.group = None            # the gloo group of the waits
        self.owns_default = False    # the default group was started here (and is ended in ``stop``)
        self.failed_together = False  # a step's error reached every rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self) -> "Ranks":
        """Open the process groups (nothing for one process); every rank calls it."""
        if self.world == 1 or self.group is not None:
            return self
        import torch
        import torch.distributed as td

        if not td.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(self.local)
            td.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
            self.owns_default = True
        self.group = td.new_group(backend="gloo", timeout=WAIT)
        log.debug("rank %d of %d: process groups open (%s)", self.rank, self.world, td.get_backend())
        return self

    def on_main(self, step: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0; its value on every rank, or its error: rank 0 raises its own, the others
        ``StepFailed`` (or a ``UserError`` when rank 0 went away before saying)."""
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
                    self._broadcast(box, step)
                except UserError:
                    pass  # the others are gone; this rank's own error is the one to show
                raise
        self._broadcast(box, step)
        if box[1] is not None:
            self.failed_together = True
            raise StepFailed(step, *box[1])
        return box[0]

    def _broadcast(self, box: List[Any], step: str) -> None:
        import torch.distributed as td

        try:
            td.broadcast_object_list(box, src=0, group=self.group)
        except RuntimeError as e:
            first = re.sub(r"^\[[^\]]*\]\s*", "", (str(e).strip().splitlines() or [""])[0])  # gloo's source place
            first = first.split(". ")[0][:200]
            who = "the other ranks" if self.main else "rank 0"
            raise UserError(f"rank {self.rank} of {self.world}: lost {who} at step {step} ({first}); "
                            f"{'their' if self.main else 'its'} own output and torchrun's summary say why") from None

    def farewell(self) -> None:
        """After a step's error reached every rank, and this rank has said so: wait (``FAREWELL`` at
        most) until every rank has said so too, for as soon as one rank ends torchrun stops the rest
        with SIGTERM (its summary may list those as stopped by SIGTERM: their line is out by then)."""
        if self.world == 1 or self.group is None or not self.failed_together:
            return
        import torch.distributed as td

        try:
            td.monitored_barrier(group=self.group, timeout=FAREWELL, wait_all_ranks=True)
        except RuntimeError as e:
            log.debug("rank %d: not every rank got this far: %s", self.rank, (str(e).splitlines() or [""])[0])

    def stop(self) -> None:
        """Close what ``start`` opened."""
        if self.group is None:
            return
        import torch.distributed as td

        if td.is_initialized():
            if self.owns_default:
                td.destroy_process_group()
            else:
                td.destroy_process_group(self.group)
        self.group = None


__all__ = ["FAREWELL", "Ranks", "StepFailed", "WAIT"]
