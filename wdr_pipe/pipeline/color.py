"""Colour histograms for a whole batch of images at once.

``color_hist_batch(rgb, cfg)`` takes a (B, H, W, 3) uint8 RGB stack and
returns (B, bins**3) float32 joint histograms, L1-normalised per image.

- ``cfg.color_space == "HSV"``: OpenCV's 8-bit HSV (``cv2.COLOR_RGB2HSV``:
  H in [0, 180) = degrees / 2, S and V in [0, 255]). Bin of a pixel:
  ``(H * bins // 180, S * bins // 256, V * bins // 256)``, i.e. equal-width
  bins over [0, 180) and [0, 256): what ``np.histogramdd`` gives with edges
  ``linspace(0, 180, bins + 1)`` and ``linspace(0, 256, bins + 1)``.
- ``cfg.color_space == "RGB"``: ``(R * bins // 256, G * bins // 256, B * bins // 256)``.
- Index of a bin in the output vector: ``(c0 * bins + c1) * bins + c2``.
- With ``cfg.ignore_background`` a pixel is near-white background, and left
  out, when ``S / 255 < cfg.background_max_s and V / 255 > cfg.background_min_v``
  (S, V of the 8-bit HSV above; defaults 0.1 and 0.9, the paper's hue
  histogram ignored the white studio background). An image with no pixel
  left gets an all-zero histogram, never NaN.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import cv2
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .features import FeatureConfig

COLOR_SPACES = ("HSV", "RGB")


@functools.lru_cache(maxsize=16)
def _bin_lut(color_space: str, bins: int) -> np.ndarray:
    """cv2.LUT table: channel value -> bin number, per channel ((256, 1, 3) uint8)."""
    v = np.arange(256)
    fine = (v * bins) // 256
    first = (np.minimum(v, 179) * bins) // 180 if color_space == "HSV" else fine
    return np.stack([first, fine, fine], axis=1).astype(np.uint8).reshape(256, 1, 3)


@functools.lru_cache(maxsize=16)
def _flag_lut(max_s: float, min_v: float) -> np.ndarray:
    """cv2.LUT table on 8-bit HSV: S -> 2 if S/255 < max_s, V -> 1 if V/255 > min_v (3 = background)."""
    v = np.arange(256) / 255.0
    return np.stack([0 * v, 2 * (v < max_s), v > min_v], axis=1).astype(np.uint8).reshape(256, 1, 3)


def background_mask(hsv: np.ndarray, max_s: float, min_v: float) -> np.ndarray:
    """True where an 8-bit HSV pixel is near-white background (S/255 < max_s and V/255 > min_v)."""
    v = np.arange(256) / 255.0
    return (v < max_s)[hsv[..., 1]] & (v > min_v)[hsv[..., 2]]


def color_hist_batch(rgb: np.ndarray, cfg: Optional["FeatureConfig"] = None) -> np.ndarray:
    """Joint colour histogram of every image of a (B, H, W, 3) uint8 RGB stack -> (B, bins**3) float32."""
    if cfg is None:
        from .features import FeatureConfig

        cfg = FeatureConfig()
    rgb = np.asarray(rgb)
    if rgb.ndim == 3:
        rgb = rgb[None]
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a (B, H, W, 3) uint8 RGB stack, got {rgb.dtype} {rgb.shape}")
    if cfg.color_space not in COLOR_SPACES:
        raise ValueError(f"unknown colour space {cfg.color_space!r}; use one of {', '.join(COLOR_SPACES)}")
    bsz, b = len(rgb), cfg.bins
    n_bins = b ** 3
    flat = np.ascontiguousarray(rgb).reshape(-1, rgb.shape[2], 3)  # the batch as one tall picture for OpenCV
    hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)
    codes = cv2.LUT(hsv if cfg.color_space == "HSV" else flat, _bin_lut(cfg.color_space, b))
    flags = cv2.LUT(hsv, _flag_lut(cfg.background_max_s, cfg.background_min_v))
    # flat index (image, flag, c0, c1, c2) of every pixel; flag 3 = near-white background
    key = codes[..., 0] * np.int32(b * b)
    key += codes[..., 1] * np.int32(b)
    key += codes[..., 2]
    key += (flags[..., 1] + flags[..., 2]) * np.int32(n_bins)
    key = key.reshape(bsz, -1)
    key += (np.arange(bsz, dtype=np.int32) * (4 * n_bins))[:, None]
    counts = np.bincount(key.ravel(), minlength=bsz * 4 * n_bins).reshape(bsz, 4, n_bins)
    counts = counts[:, :3].sum(1) if cfg.ignore_background else counts.sum(1)
    totals = counts.sum(axis=1, keepdims=True)
    return (counts / np.maximum(totals, 1)).astype(np.float32)
