"""Colour histograms for a whole batch of images at once.

``color_hist_batch(rgb, cfg)`` takes a (B, H, W, 3) uint8 RGB stack and
returns (B, bins**3) float32 joint histograms, L1-normalised per image.

- ``color_space == "HSV"``: OpenCV's 8-bit HSV (``cv2.COLOR_RGB2HSV``:
  H in [0, 180) = degrees / 2, S and V in [0, 255]). Bin of a pixel:
  ``(H * bins // 180, S * bins // 256, V * bins // 256)``, i.e. equal-width
  bins over [0, 180) and [0, 256): what ``np.histogramdd`` gives with edges
  ``linspace(0, 180, bins + 1)`` and ``linspace(0, 256, bins + 1)``.
- ``color_space == "RGB"``: ``(R * bins // 256, G * bins // 256, B * bins // 256)``.
- Index of a bin in the output vector: ``(c0 * bins + c1) * bins + c2``.
- With ``ignore_background`` a pixel is near-white background, and left
  out, when ``S / 255 < background_max_s and V / 255 > background_min_v``
  (S, V of the 8-bit HSV above; defaults 0.1 and 0.9, the paper's hue
  histogram ignored the white studio background). An image with no pixel
  left gets an all-zero histogram, never NaN.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from ..configs import COLOR_SPACES


@functools.lru_cache(maxsize=16)
def _lut(kind: str, bins: int, max_s: float, min_v: float) -> np.ndarray:
    """cv2.LUT table ((256, 1, 3) uint8) giving per channel a code (bin + bins * flag).

    "HSV" on 8-bit HSV: (H bin, S bin + bins * [S/255 < max_s], V bin + bins * [V/255 > min_v]);
    "RGB" on RGB: the three bins; "flags" on 8-bit HSV: (0, bins * [S low], bins * [V high]).
    """
    v = np.arange(256)
    fine = (v * bins) // 256
    low_s, high_v = bins * (v / 255.0 < max_s), bins * (v / 255.0 > min_v)
    cols = {"HSV": [(np.minimum(v, 179) * bins) // 180, fine + low_s, fine + high_v],
            "RGB": [fine, fine, fine],
            "flags": [0 * v, low_s, high_v]}[kind]
    return np.stack(cols, axis=1).astype(np.uint8).reshape(256, 1, 3)


def color_hist_batch(rgb: np.ndarray, bins: int = 8, color_space: str = "HSV", ignore_background: bool = True,
                     background_max_s: float = 0.1, background_min_v: float = 0.9) -> np.ndarray:
    """Joint colour histogram of every image of a (B, H, W, 3) uint8 RGB stack -> (B, bins**3) float32."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 3:
        rgb = rgb[None]
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a (B, H, W, 3) uint8 RGB stack, got {rgb.dtype} {rgb.shape}")
    if color_space not in COLOR_SPACES:
        raise ValueError(f"unknown colour space {color_space!r}; use one of {', '.join(COLOR_SPACES)}")
    bsz, b = len(rgb), bins
    args = (b, background_max_s, background_min_v)
    flat = np.ascontiguousarray(rgb).reshape(-1, rgb.shape[2], 3)  # the batch as one tall picture for OpenCV
    hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)
    if color_space == "HSV":
        codes = cv2.LUT(hsv, _lut("HSV", *args))
    else:
        codes = cv2.add(cv2.LUT(flat, _lut("RGB", *args)), cv2.LUT(hsv, _lut("flags", *args)))
    # per pixel: index of (c0, S flag, c1, V flag, c2) in a (b, 2, b, 2, b) histogram, plus the image's offset
    key = cv2.transform(codes.astype(np.float32), np.array([[4 * b * b, 2 * b, 1]], np.float32))
    key = key.reshape(bsz, -1).astype(np.intp)
    key += (np.arange(bsz) * 4 * b ** 3)[:, None]
    counts = np.bincount(key.ravel(), minlength=bsz * 4 * b ** 3).reshape(bsz, b, 2, b, 2, b)
    hist = counts.sum(axis=(2, 4))
    if ignore_background:
        hist -= counts[:, :, 1, :, 1, :]  # both flags set: near-white background
    hist = hist.reshape(bsz, b ** 3)
    return (hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)).astype(np.float32)
