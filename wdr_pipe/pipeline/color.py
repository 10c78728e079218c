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
def _tables(color_space: str, bins: int):
    """Per-channel look-up tables uint8 value -> that channel's part of the flat bin index."""
    v = np.arange(256)
    fine = (v * bins) // 256
    first = ((np.minimum(v, 179) * bins) // 180) if color_space == "HSV" else fine
    return first * bins * bins, fine * bins, fine


def background_mask(hsv: np.ndarray, max_s: float, min_v: float) -> np.ndarray:
    """True where an 8-bit HSV pixel is near-white background (S/255 < max_s and V/255 > min_v)."""
    v = np.arange(256) / 255.0
    low_s, high_v = v < max_s, v > min_v
    return low_s[hsv[..., 1]] & high_v[hsv[..., 2]]


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
    bsz, h, w, _ = rgb.shape
    n_bins = cfg.bins ** 3
    hsv = None
    if cfg.color_space == "HSV" or cfg.ignore_background:
        # one cvtColor call for the whole batch: images stacked as one tall picture
        hsv = cv2.cvtColor(np.ascontiguousarray(rgb).reshape(bsz * h, w, 3), cv2.COLOR_RGB2HSV).reshape(rgb.shape)
    chans = hsv if cfg.color_space == "HSV" else rgb
    t0, t1, t2 = _tables(cfg.color_space, cfg.bins)
    idx = t0[chans[..., 0]]
    idx += t1[chans[..., 1]]
    idx += t2[chans[..., 2]]
    if cfg.ignore_background:
        idx[background_mask(hsv, cfg.background_max_s, cfg.background_min_v)] = n_bins  # a bin we drop
    idx += (np.arange(bsz) * (n_bins + 1))[:, None, None]
    counts = np.bincount(idx.ravel(), minlength=bsz * (n_bins + 1)).reshape(bsz, n_bins + 1)[:, :n_bins]
    totals = counts.sum(axis=1, keepdims=True)
    return (counts / np.maximum(totals, 1)).astype(np.float32)
