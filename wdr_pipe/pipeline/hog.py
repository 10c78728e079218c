"""HOG descriptors for a whole batch of images at once, equal to ``skimage.feature.hog``.

``hog_batch(images, cfg)`` takes a (B, H, W) stack of grayscale images and
returns (B, D) float32 descriptors that match, image by image,
``skimage.feature.hog(image, cfg.orientations, (cfg.cell, cfg.cell),
(cfg.block, cfg.block), cfg.block_norm)`` (to about 1e-6; tested to 1e-4),
about 20x faster than calling it in a loop. It follows skimage step by step:

1. gradients by central differences, ``g[i] = x[i+1] - x[i-1]``, set to 0
   on the first and last row (column), in float32 (float64 for float64
   input), as skimage does for a single-channel image;
2. orientation ``rad2deg(arctan2(g_row, g_col)) % 180`` in float64 and bin
   ``i`` holding ``180/n * i <= angle < 180/n * (i+1)`` (the same float
   comparisons as skimage's ``_hoghistogram.pyx``, so no pixel changes bin);
   magnitude ``hypot(g_row, g_col)``;
3. cell histograms: the magnitudes summed per (cell, bin) with one
   ``np.bincount`` over the batch, divided by the pixels per cell; rows and
   columns past the last whole cell are ignored;
4. every ``block x block`` window of cells normalised (L1, L1-sqrt, L2 or
   L2-Hys with eps = 1e-5) and flattened in skimage's order
   (block row, block col, cell row, cell col, orientation).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .features import FeatureConfig

EPS = 1e-5
BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")


def hog_dim(size: int, orientations: int, cell: int, block: int) -> int:
    """Length of the descriptor of a ``size`` x ``size`` image."""
    n_blocks = size // cell - block + 1
    if n_blocks <= 0:
        raise ValueError(f"a {size}x{size} image is smaller than one block of {block}x{block} cells of {cell} px")
    return n_blocks * n_blocks * block * block * orientations


def _gradients(images: np.ndarray):
    """Central differences along rows and columns, zero on the border rows/columns."""
    ftype = np.float64 if images.dtype == np.float64 else np.float32
    x = images.astype(ftype, copy=False)
    g_row = np.zeros(x.shape, ftype)
    g_col = np.zeros(x.shape, ftype)
    np.subtract(x[:, 2:, :], x[:, :-2, :], out=g_row[:, 1:-1, :])
    np.subtract(x[:, :, 2:], x[:, :, :-2], out=g_col[:, :, 1:-1])
    return g_row, g_col


def _orientation_bins(g_row: np.ndarray, g_col: np.ndarray, orientations: int) -> np.ndarray:
    """Orientation bin of every pixel, or ``orientations`` where skimage counts it in no bin."""
    angle = np.rad2deg(np.arctan2(g_row.astype(np.float64), g_col.astype(np.float64)))
    # angle % 180 as numpy computes it (fmod, then + 180 for negatives), without its slow generic loop
    angle[angle == 180.0] = 0.0
    angle += 180.0 * (angle < 0)
    per_bin = 180.0 / orientations
    edges = per_bin * np.arange(orientations + 1, dtype=np.float64)  # the same products as skimage
    b = np.minimum((angle * (1.0 / per_bin)).astype(np.int64), orientations - 1)
    b -= angle < edges[b]                    # fix the rare pixels that the product put one bin off
    b += angle >= edges[b + 1]
    return b                                 # == orientations where angle >= edges[-1] (skipped)


@functools.lru_cache(maxsize=8)
def _uint8_tables(orientations: int):
    """Bin and magnitude of every integer gradient pair (g_row, g_col) in [-255, 255]^2.

    Computed once with the float code above, so a uint8 image gets exactly the
    bins and magnitudes skimage computes, by two table look-ups per pixel.
    """
    g = np.arange(-255, 256, dtype=np.float64)
    g_row, g_col = np.meshgrid(g, g, indexing="ij")
    bins = _orientation_bins(g_row, g_col, orientations)
    mag = np.hypot(g_row, g_col)
    mag[bins == orientations] = 0.0
    return np.minimum(bins, orientations - 1).ravel(), mag.ravel()


def _bins_and_magnitudes(images: np.ndarray, orientations: int):
    """(bins int, magnitudes float64) per pixel; pixels skimage counts nowhere get magnitude 0."""
    if images.dtype == np.uint8:
        x = images.astype(np.intp)
        key = np.full(x.shape, 255 * 511 + 255, np.intp)  # (g_row + 255) * 511 + (g_col + 255)
        key[:, 1:-1, :] += 511 * (x[:, 2:, :] - x[:, :-2, :])
        key[:, :, 1:-1] += x[:, :, 2:] - x[:, :, :-2]
        bin_table, mag_table = _uint8_tables(orientations)
        return bin_table[key], mag_table[key]
    g_row, g_col = _gradients(images)
    mag = np.hypot(g_row.astype(np.float64), g_col.astype(np.float64))
    bins = _orientation_bins(g_row, g_col, orientations)
    mag[bins == orientations] = 0.0          # counted nowhere, as in skimage
    np.minimum(bins, orientations - 1, out=bins)
    return bins, mag


def cell_histograms(images: np.ndarray, orientations: int, cell: int) -> np.ndarray:
    """(B, cells_down, cells_across, orientations) float64 histograms of gradient orientation."""
    if images.ndim != 3:
        raise ValueError(f"expected a (B, H, W) stack of grayscale images, got shape {images.shape}")
    bsz, h, w = images.shape
    nr, nc = h // cell, w // cell
    bins, mag = _bins_and_magnitudes(images, orientations)
    bins, mag = bins[:, : nr * cell, : nc * cell], mag[:, : nr * cell, : nc * cell]
    # flat index (image, cell row, cell col, bin) of every pixel
    rows = np.arange(nr * cell) // cell
    cols = np.arange(nc * cell) // cell
    per_image = nr * nc * orientations
    base = (rows[:, None] * nc + cols[None, :]) * orientations + (np.arange(bsz) * per_image)[:, None, None]
    hist = np.bincount((bins + base).ravel(), weights=mag.ravel(), minlength=bsz * per_image)
    return hist.reshape(bsz, nr, nc, orientations) / (cell * cell)


def normalize_blocks(hist: np.ndarray, block: int, method: str = "L2-Hys") -> np.ndarray:
    """(B, n_blocks_down, n_blocks_across, block * block * orientations) normalised block vectors."""
    bsz, nr, nc, n = hist.shape
    nbr, nbc = nr - block + 1, nc - block + 1
    if nbr <= 0 or nbc <= 0:
        raise ValueError(f"image too small: {nr}x{nc} cells, blocks of {block}x{block} cells")
    win = np.lib.stride_tricks.sliding_window_view(hist, (block, block), axis=(1, 2))  # B,nbr,nbc,n,b,b
    blocks = win.transpose(0, 1, 2, 4, 5, 3).reshape(bsz, nbr, nbc, block * block * n)
    if method == "L1":
        return blocks / (np.abs(blocks).sum(-1, keepdims=True) + EPS)
    if method == "L1-sqrt":
        return np.sqrt(blocks / (np.abs(blocks).sum(-1, keepdims=True) + EPS))
    if method in ("L2", "L2-Hys"):
        out = blocks / np.sqrt(np.square(blocks).sum(-1, keepdims=True) + EPS**2)
        if method == "L2-Hys":
            np.minimum(out, 0.2, out=out)
            out /= np.sqrt(np.square(out).sum(-1, keepdims=True) + EPS**2)
        return out
    raise ValueError(f"unknown block normalisation {method!r}; use one of {', '.join(BLOCK_NORMS)}")


def hog_batch(images: np.ndarray, cfg: Optional["FeatureConfig"] = None) -> np.ndarray:
    """HOG of every image of a (B, H, W) uint8 or float stack -> (B, D) float32 (see module doc)."""
    if cfg is None:
        from .features import FeatureConfig

        cfg = FeatureConfig()
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    hist = cell_histograms(images, cfg.orientations, cfg.cell)
    blocks = normalize_blocks(hist, cfg.block, cfg.block_norm)
    return blocks.reshape(len(images), -1).astype(np.float32)
