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

from ..imaging import FAST_MAX, HEADROOM, ImageRejected, decode_resized, process, target_size  # noqa: F401
from .checks import FETCH_BOUNDS, RESIZE_MODES, check_all, check_choice


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
        check_choice("fetch config", "--resize-mode", self.resize_mode, RESIZE_MODES)
        check_all("fetch config", self, FETCH_BOUNDS)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of equal shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
