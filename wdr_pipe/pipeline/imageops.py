"""The fetch image settings (``FetchConfig``) over the shared resize in ``wdr_pipe.imaging``.

``process(data, spec)`` (decode, orient, convert, resize, re-encode) and
``decode_resized`` live in ``wdr_pipe.imaging``, below both the data stages
and the model side, so that ``wdr-pipe predict IMAGE`` resizes a new photo
exactly as fetch stored the training images; they are re-exported here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..imaging import (FAST_MAX, HEADROOM, RESIZE_MODES, ImageRejected, decode_resized, process,  # noqa: F401
                       target_size)


@dataclass(frozen=True)
class FetchConfig:
    """What the stored images look like; hashed, it is the store's image key."""

    size: int = 320
    resize_mode: str = "shorter"
    quality: int = 95
    min_size: int = 32            # smaller sources (either side) are rejected
    max_pixels: int = 80_000_000  # decompression-bomb guard, checked from the header
    version: int = 2              # 2: DCT-scaled decode at full or half scale (_dct_min_size)

    def __post_init__(self):
        checks = [
            (self.resize_mode in RESIZE_MODES, f"--resize-mode {self.resize_mode!r}: use one of {', '.join(RESIZE_MODES)}"),
            (self.size >= 8, f"--size {self.size}: use 8 or more"),
            (1 <= self.quality <= 100, f"--quality {self.quality}: use 1 to 100"),
            (self.min_size >= 1, f"--min-size {self.min_size}: use 1 or more"),
            (self.max_pixels >= 1, f"max_pixels {self.max_pixels}: use 1 or more"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"fetch config: {msg}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of equal shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
