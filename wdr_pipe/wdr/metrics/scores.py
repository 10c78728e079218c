"""Multi-label metrics on numpy arrays: micro/macro F1, precision, recall, mAP and accuracies.

Inputs, for N images and L labels:

- ``y_true``: (N, L) of 0/1 (bool or any integer or float type holding only 0 and 1);
- ``scores``: (N, L) probabilities in [0, 1] (apply a sigmoid to logits first);
- ``thresholds``: a scalar or an (L,) vector, one per label.

The decision rule, here and in ``thresholds.py``: **a label is predicted when
its score is >= its threshold** (so a threshold of 0 predicts everything and
one above 1 predicts nothing).

Undefined ratios follow scikit-learn's ``zero_division=0``: a label never
predicted has precision 0, a label with no positive image has recall 0, and
F1 is ``2 tp / (2 tp + fp + fn)``, 0 when that denominator is 0 (no positive
and no prediction). Macro averages are plain means over all L labels, those
with no support included, as ``sklearn.metrics.f1_score(average="macro")``
computes them. Mean average precision is the mean over labels with at least
one positive image of scikit-learn's ``average_precision_score`` (the step
sum over distinct score values, tied scores taken together); a label without
positives has average precision NaN and is left out of the mean.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import numpy as np

from ...errors import UserError

Thresholds = Union[float, np.ndarray]


def check_labels(y_true, name: str = "y_true") -> np.ndarray:
    """A non-empty (N, L) 0/1 matrix as bool, or a ``UserError`` naming ``name``."""
    y = np.asarray(y_true)
    if y.ndim != 2:
        raise UserError(f"{name}: expected an (images, labels) matrix, got shape {y.shape}; "
                        "pass one row of 0/1 per image")
    if y.shape[0] == 0 or y.shape[1] == 0:
        raise UserError(f"{name}: shape {y.shape} has no images or no labels; pass a non-empty split")
    if y.dtype != bool:
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise UserError(f"{name}: dtype {y.dtype} is not numeric; pass 0/1 (or bool) labels")
        if np.any((y != 0) & (y != 1)):
            raise UserError(f"{name}: holds values other than 0 and 1; pass a multi-hot 0/1 matrix")
        y = y != 0
    return y


def check_inputs(y_true, scores) -> Tuple[np.ndarray, np.ndarray]:
    """``(y_true as bool (N, L), scores as float32/float64 (N, L))``, or a ``UserError``."""
    y = check_labels(y_true)
    s = np.asarray(scores)
    if s.shape != y.shape:
        raise UserError(f"scores: shape {s.shape} differs from y_true's {y.shape}; "
                        "pass one score per image and label, in the same order")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise UserError(f"scores: dtype {s.dtype} is not numeric; pass float probabilities")
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float32 if s.dtype == np.float16 else np.float64)
    lo, hi = float(s.min()), float(s.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise UserError("scores: hold NaN or infinite values; check the model's outputs")
    if lo < 0.0 or hi > 1.0:
        raise UserError(f"scores: values outside [0, 1] (min {lo:g}, max {hi:g}); "
                        "pass probabilities (apply a sigmoid to logits)")
    return y, s


def as_thresholds(thresholds: Thresholds, n_labels: int) -> np.ndarray:
    """A scalar or (L,) ``thresholds`` as a float64 (L,) vector, or a ``UserError``."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(n_labels, float(t))
    if t.shape != (n_labels,):
        raise UserError(f"thresholds: shape {t.shape} does not match {n_labels} labels; "
                        "pass one threshold or one per label")
    if not np.all(np.isfinite(t)):
        raise UserError("thresholds: hold NaN or infinite values; pass finite thresholds")
    return t


def predict(scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """(N, L) bool: ``scores >= thresholds`` (the one decision rule of this package)."""
    s = np.asarray(scores)
    return s >= as_thresholds(thresholds, s.shape[1])[None, :]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float64, 0 where ``den`` is 0 (``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def label_counts(y_true: np.ndarray, y_pred: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label ``(tp, fp, fn)`` as int64 (L,) arrays from bool (N, L) matrices."""
    tp = np.count_nonzero(y_true & y_pred, axis=0).astype(np.int64)
    fp = np.count_nonzero(y_pred, axis=0) - tp
    fn = np.count_nonzero(y_true, axis=0) - tp
    return tp, fp, fn


def f1_from_counts(tp, fp, fn):
    """``2 tp / (2 tp + fp + fn)``, 0 where nothing is positive or predicted; works on arrays."""
    tp = np.asarray(tp, dtype=np.int64)
    return _ratio(2 * tp, 2 * tp + np.asarray(fp) + np.asarray(fn))


def micro(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    """Micro ``precision``, ``recall`` and ``f1`` of bool (N, L) truth and decisions: the counts of all
    labels pooled (the FGVC5 metric is the F1). The one micro-F1 of the package: training's validation,
    the thresholds' search and ``summary`` all come here; inputs are not checked (``micro_f1`` does)."""
    tp, fp, fn = (int(c.sum()) for c in label_counts(y_true, y_pred))
    return {"precision": float(_ratio(tp, tp + fp)), "recall": float(_ratio(tp, tp + fn)),
            "f1": float(f1_from_counts(tp, fp, fn))}


def micro_f1(y_true, y_pred) -> float:
    """Micro-averaged F1 of (N, L) 0/1 truth and predictions (the FGVC5 metric), inputs checked."""
    y, p = check_labels(y_true), check_labels(y_pred, "y_pred")
    if p.shape != y.shape:
        raise UserError(f"y_pred: shape {p.shape} differs from y_true's {y.shape}; pass one decision "
                        "per image and label")
    return micro(y, p)["f1"]


def average_precision(y_true, scores) -> np.ndarray:
    """(L,) average precision per label, equal to ``sklearn.metrics.average_precision_score``
    on each column; NaN for a label with no positive image.

    Each column is sorted once (descending); a positive image at sorted position i
    contributes the precision at the end of its run of tied scores, and AP is the mean
    of those contributions over the label's positives.
    """
    y, s = check_inputs(y_true, scores)
    n = y.shape[0]
    order = np.argsort(s.T, axis=1)[:, ::-1]   # (L, N), descending; order within ties is irrelevant
    s_sorted = np.take_along_axis(s.T, order, axis=1)
    y_sorted = np.take_along_axis(y.T, order, axis=1)
    tp = np.cumsum(y_sorted, axis=1, dtype=np.int64)                  # tp among the top i+1
    run_end = np.full(s_sorted.shape, n - 1, dtype=np.int64)          # last index of each tie run
    ends = s_sorted[:, :-1] != s_sorted[:, 1:]
    run_end[:, :-1] = np.where(ends, np.arange(n - 1), n - 1)
    run_end = np.minimum.accumulate(run_end[:, ::-1], axis=1)[:, ::-1]
    precision = np.take_along_axis(tp, run_end, axis=1) / (run_end + 1.0)
    positives = tp[:, -1]
    total = np.where(y_sorted, precision, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, total / positives, np.nan)


def per_label(y_true, scores, thresholds: Thresholds) -> Dict[str, np.ndarray]:
    """Per-label (L,) arrays, in column order: ``support``, ``predicted``, ``tp``,
    ``precision``, ``recall``, ``f1``, ``threshold`` and ``average_precision``
    (NaN without support). Key them by the store's label ids to make a table."""
    y, s = check_inputs(y_true, scores)
    t = as_thresholds(thresholds, y.shape[1])
    tp, fp, fn = label_counts(y, predict(s, t))
    return {
        "support": tp + fn,
        "predicted": tp + fp,
        "tp": tp,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": f1_from_counts(tp, fp, fn),
        "threshold": t,
        "average_precision": average_precision(y, s),
    }


def summary(y_true, scores, thresholds: Thresholds) -> Dict[str, float]:
    """Every headline metric of one split at the given thresholds, as plain floats and ints.

    Keys: ``images``, ``labels``, ``labels_with_positives``, ``micro_f1``,
    ``micro_precision``, ``micro_recall``, ``macro_f1``, ``macro_precision``,
    ``macro_recall``, ``mean_average_precision``, ``subset_accuracy`` (exact match of
    the whole row) and ``hamming_accuracy`` (1 - Hamming loss: the share of correct
    image-label decisions, the VGG-16 paper's "accuracy").
    """
    y, s = check_inputs(y_true, scores)
    pred = predict(s, thresholds)
    tp, fp, fn = label_counts(y, pred)
    pooled = micro(y, pred)
    ap = average_precision(y, s)
    has_pos = ~np.isnan(ap)
    wrong = np.count_nonzero(pred != y, axis=1)
    return {
        "images": int(y.shape[0]),
        "labels": int(y.shape[1]),
        "labels_with_positives": int(has_pos.sum()),
        "micro_f1": pooled["f1"],
        "micro_precision": pooled["precision"],
        "micro_recall": pooled["recall"],
        "macro_f1": float(f1_from_counts(tp, fp, fn).mean()),
        "macro_precision": float(_ratio(tp, tp + fp).mean()),
        "macro_recall": float(_ratio(tp, tp + fn).mean()),
        "mean_average_precision": float(ap[has_pos].mean()) if has_pos.any() else float("nan"),
        "subset_accuracy": float(np.mean(wrong == 0)),
        "hamming_accuracy": float(1.0 - wrong.sum() / y.size),
    }
