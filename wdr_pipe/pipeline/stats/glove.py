"""Label embeddings by GloVe-style factorisation of a label co-occurrence matrix.

Minimises, over the off-diagonal pairs with C_ij > 0 (both triangles),

    sum f(C_ij) (u_i . v_j + b_i + c_j - log C_ij)^2,   f(c) = min(1, (c / x_max)^0.75)

with full-batch Adagrad on dense (L, L) arrays (L is a few hundred labels, so
an epoch is a handful of small matrix products), and returns (U + V) / 2.
The products use ``np.einsum``, not BLAS: for matrices this small a
multi-threaded BLAS spends more time waking threads than computing (10 to
100 times slower on a busy machine), and einsum's single loop gives the same
bits on every run.
The diagonal (a label "co-occurring" with itself, i.e. its count) is left
out: a label's frequency goes into its biases. A label that never shares an
image with another keeps its small random start vector. Seeded and
deterministic: the same matrix and settings give the same vectors.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np


def glove_weights(C: np.ndarray, x_max: float = 100.0, power: float = 0.75) -> np.ndarray:
    """f(C) = min(1, (C / x_max)^power), zero on the diagonal and where C == 0."""
    C = np.asarray(C, dtype=np.float64)
    f = np.minimum(1.0, (C / x_max) ** power)
    f[C <= 0] = 0.0
    np.fill_diagonal(f, 0.0)
    return f


def fit_glove(C: np.ndarray, dim: int = 20, epochs: int = 1000, lr: float = 0.05, x_max: float = 100.0,
              seed: int = 0, rows: Optional[np.ndarray] = None,
              n_labels: Optional[int] = None) -> Tuple[np.ndarray, List[float]]:
    """Fit embeddings to the symmetric count matrix ``C`` (L, L).

    Returns ``(vectors float32 (L, dim), losses)`` where ``losses[e]`` is the
    weighted mean squared error before epoch ``e`` and ``losses[-1]`` the final one.

    ``rows`` (sorted positions in a label space of ``n_labels``) says that ``C`` holds only
    those labels (the ones that occur): the start vectors are drawn for the whole space, the
    fit runs on ``C`` alone, and the result has ``n_labels`` rows, the others keeping their
    start vector, as they would in a fit on the whole (mostly zero) matrix.
    """
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"co-occurrence matrix must be square, got shape {C.shape}")
    n = C.shape[0]
    total = n if rows is None else int(n_labels)
    rng = np.random.default_rng(seed)
    U0 = (rng.random((total, dim)) - 0.5) / dim
    V0 = (rng.random((total, dim)) - 0.5) / dim
    if rows is None:
        vectors, losses = _fit(C, U0, V0, epochs, lr, x_max)
        return vectors, losses
    vectors = ((U0 + V0) / 2).astype(np.float32)
    vectors[rows], losses = _fit(C, U0[rows], V0[rows], epochs, lr, x_max)
    return vectors, losses


def _fit(C: np.ndarray, U: np.ndarray, V: np.ndarray, epochs: int, lr: float,
         x_max: float) -> Tuple[np.ndarray, List[float]]:
    n = C.shape[0]
    b = np.zeros(n)
    c = np.zeros(n)
    f = glove_weights(C, x_max)
    mask = f > 0
    target = np.where(mask, np.log(np.where(mask, C, 1.0)), 0.0)
    wsum = max(float(f.sum()), 1e-12)
    # Adagrad accumulators start at 1, as in the GloVe reference code.
    gU, gV, gb, gc = np.ones_like(U), np.ones_like(V), np.ones(n), np.ones(n)
    losses: List[float] = []
    for _ in range(epochs):
        diff = np.einsum("ik,jk->ij", U, V) + b[:, None] + c[None, :] - target
        E = f * diff                      # zero outside the fitted pairs
        losses.append(float((E * diff).sum() / wsum))
        dU = np.einsum("ij,jk->ik", E, V)  # half the gradient; the 2 folds into lr
        dV = np.einsum("ji,jk->ik", E, U)
        db, dc = E.sum(axis=1), E.sum(axis=0)
        gU += dU * dU
        gV += dV * dV
        gb += db * db
        gc += dc * dc
        U -= lr * dU / np.sqrt(gU)
        V -= lr * dV / np.sqrt(gV)
        b -= lr * db / np.sqrt(gb)
        c -= lr * dc / np.sqrt(gc)
    diff = np.einsum("ik,jk->ij", U, V) + b[:, None] + c[None, :] - target
    losses.append(float((f * diff * diff).sum() / wsum))
    return ((U + V) / 2).astype(np.float32), losses
