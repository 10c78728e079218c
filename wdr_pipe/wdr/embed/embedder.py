"""A backbone on a device that turns stored JPEG bytes (or decoded images) into pooled vectors.

Shared by the embed stage (``stage.py``) and search (``search.py``, which
embeds a query file on the fly with the same function). The pixels are those
of the trainer's validation batches: ``imaging.decode_rgb`` in full, the eval
transform, ``Normalize``; the model runs in eval mode under
``torch.inference_mode``, channels_last, in bf16 autocast on CUDA (float32 on
the CPU), in batches of ``batch_size`` (CPU: 32; CUDA: what half of the free
memory holds, from a probe batch, halved again on an out-of-memory error).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np
import torch

from ...errors import UserError
from ...imaging import decode_rgb
from ..data.transforms import DataConfig, Normalize, make_transform

log = logging.getLogger("wdr_pipe")


class Embedder:
    """A backbone on a device, ready to turn stored JPEG bytes (or decoded images) into vectors."""

    def __init__(self, model: torch.nn.Module, dcfg: DataConfig, device, batch_size: Optional[int] = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.transform = make_transform(dcfg, train=False)
        self.normalize = Normalize.from_config(dcfg).to(self.device)
        self.size, self.batch_size = dcfg.size, 8
        self.dim = int(self.forward(np.zeros((1, dcfg.size, dcfg.size, 3), np.uint8)).shape[1])
        self.batch_size = batch_size or self._auto_batch()

    def decode(self, jpeg: Optional[bytes]) -> np.ndarray:
        return self.transform(decode_rgb(jpeg))

    @torch.inference_mode()
    def forward(self, images: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 -> (n, D) float32 vectors, in chunks of at most ``batch_size``."""
        modes = [(m, m.training) for m in self.model.modules()]  # restored exactly (a trainer's frozen parts)
        self.model.eval()
        try:
            out = []
            for a in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[a:a + self.batch_size])).permute(0, 3, 1, 2)
                x = self.normalize(x.to(self.device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                    out.append(self.model(x).float().cpu().numpy())
            return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        finally:
            for m, mode in modes:
                m.training = mode

    def _auto_batch(self) -> int:
        """CPU: 32. CUDA: what half of the free memory holds, from one probe batch of 8 (8 .. 1024)."""
        if not self.cuda:
            return 32
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self.forward(np.zeros((8, self.size, self.size, 3), np.uint8))
        per_image = max(1, (torch.cuda.max_memory_allocated(self.device) - base) / 8)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(8, min(1024, 0.5 * free / per_image)) // 8 * 8)

    def vectors(self, images: np.ndarray) -> np.ndarray:
        """``forward``, halving the batch on a CUDA out-of-memory error."""
        while True:
            try:
                return self.forward(images)
            except torch.OutOfMemoryError:
                if self.batch_size <= 1:
                    raise UserError(f"out of memory on {self.device} with one image of {self.size} px; "
                                    "use a smaller --image-size or the CPU (--device cpu)") from None
                torch.cuda.empty_cache()
                self.batch_size //= 2
                log.info("embed: out of memory; batches of %d now", self.batch_size)


def decode_all(embedder: Embedder, pool: ThreadPoolExecutor, jpegs: List[Optional[bytes]]):
    """JPEG bytes -> (stack of the decodable ones (n_ok, S, S, 3) uint8, error per row or None), on ``pool``."""
    def one(data):
        try:
            return embedder.decode(data), None
        except Exception as e:  # any undecodable row becomes a null row, never a crashed shard
            return None, f"{type(e).__name__}: {e}"[:300]

    done = list(pool.map(one, jpegs))
    ok = [img for img, err in done if err is None]
    stack = np.stack(ok) if ok else np.zeros((0, embedder.size, embedder.size, 3), np.uint8)
    return stack, [err for _, err in done]


__all__ = ["Embedder", "decode_all"]
