"""Per-label decision thresholds that maximise micro-F1: Fan and Lin's cyclic
optimisation (SCut), vectorised, with a global fallback for rare labels.

Decision rule (as in ``scores.py``): a label is predicted when its score is
**>= its threshold**.

``tune_thresholds(y_true, scores)`` on a validation split:

1. The **global threshold** is the single threshold, shared by all labels,
   with the best micro-F1: one scan over every cut of all N x L scores sorted
   together.
2. Labels with fewer than ``min_positives`` positive images keep the global
   threshold (``fallback``): a threshold tuned on two or three positives
   over-fits. The others start at 0.5.
3. Cycle over the tuned labels in column order. For label j, with every other
   label fixed: take j's counts out of the global TP, FP, FN; with j's scores
   sorted descending, ``tp(k)`` and ``fp(k) = k - tp(k)`` are its counts when
   its top k images are predicted, ``fn(k) = P_j - tp(k)``, and

       F1(k) = 2 (TP + tp) / (2 (TP + tp) + FP + fp + FN + fn)

   is evaluated for every cut k = 0 .. N at once (numpy, no loop over cuts).
   A cut can only fall between two distinct scores (tied images are predicted
   together); k = 0 predicts nothing, k = N everything.
4. Move to the best cut. Ties: if the current cut is among the best, the
   current threshold is kept unchanged; otherwise, among the best cuts, the one
   that flips the fewest of j's predictions (``|k - k_now|`` smallest), and of
   two equally near, the higher threshold (fewer positives). So a step never
   lowers micro-F1 and changes a threshold only for a strict gain.
5. A pass visits every tuned label; passes repeat until one gains nothing,
   at most ``max_passes`` (6, as the authors capped it). ``passes`` counts
   that last, confirming pass.

Where a cut k puts the threshold (scores s sorted descending, computed in the
scores' own dtype so the threshold is exactly representable in float32 and
float64 alike): ``(s[k-1] + s[k]) / 2`` for 0 < k < N (or ``s[k-1]`` if
rounding put the midpoint on ``s[k]``); for k = 0 the midpoint of the largest
score and 1 (just above 1 when the largest score is 1), for k = N half the
smallest score. A threshold lies between two validation scores (or on the
upper one), so a new score equal to a validation score gets that image's decision.

Exact ties in F1 are found by comparing float64 values: each is a correctly
rounded quotient of integers, and two different quotients with denominators
below about 6e7 (they are at most 2 N L) never round to the same value.

Cost: the columns are sorted once (one argsort of the L x N matrix), their
cumulative positive counts and valid cuts taken once; a step is about six
O(N) array operations, and a threshold is computed only for the cut taken.
Memory: the argsort index and the cumulative counts are (L, N + 1) int64
(18 MB each at 10,000 x 228), plus the sorted scores and a bool mask: fine
for a validation split, not meant for a million images.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from ...cache.atomic import write_text_atomic
from ...errors import UserError
from .scores import as_thresholds, check_inputs, f1_from_counts, label_counts, micro, predict

log = logging.getLogger("wdr_pipe")

START = 0.5
FORMAT = "wdr-pipe thresholds"
VERSION = 1


@dataclasses.dataclass
class ThresholdResult:
    """What ``tune_thresholds`` found (and what ``thresholds.json`` holds)."""

    thresholds: np.ndarray      # (L,) float64, in column order
    global_threshold: float     # the best single threshold for all labels
    f1_before: float            # micro-F1 with 0.5 for every label
    f1_global: float            # micro-F1 with global_threshold for every label
    f1_after: float             # micro-F1 with ``thresholds``
    passes: int                 # passes run, the last (no gain) one included
    fallback: np.ndarray        # (L,) bool: labels given the global threshold
    min_positives: int
    f1_by_pass: Tuple[float, ...] = ()  # micro-F1 at the start, then after each pass

    def describe(self) -> str:
        """One line for a log or a terminal (in-sample figures: see ``cross_validated_gain``)."""
        return (f"thresholds: micro-F1 {self.f1_before:.4f} at 0.5, {self.f1_global:.4f} at one global "
                f"threshold {self.global_threshold:.3f}, {self.f1_after:.4f} per label ({self.passes} passes; "
                f"{int(self.fallback.sum())} of {self.fallback.size} labels under {self.min_positives} "
                "positives kept the global one)")


def _above(top, dtype) -> np.floating:
    """A threshold above the largest score ``top`` (k = 0: predict nothing)."""
    one = dtype.type(1)
    if top >= one:
        return np.nextafter(one, dtype.type(2))
    t = (top + one) / dtype.type(2)
    return t if t > top else one


def _threshold_at(s_desc: np.ndarray, k: int) -> float:
    """The threshold that predicts exactly the top ``k`` of a column sorted descending
    (k a valid cut), computed in the scores' dtype (module doc)."""
    two = s_desc.dtype.type(2)
    if k == 0:
        return float(_above(s_desc[0], s_desc.dtype))
    if k == s_desc.size:
        return float(s_desc[-1] / two)
    a, b = s_desc[k - 1], s_desc[k]
    mid = (a + b) / two
    return float(mid if mid > b else a)


def _sort_desc(s: np.ndarray, y: np.ndarray):
    """Along the last axis: ``(scores sorted descending, positives among the top k for
    k = 0..N, valid cuts)``; a cut k is valid when k = 0, k = N or ``s[k-1] > s[k]``."""
    order = np.argsort(s, axis=-1)[..., ::-1]  # order within ties is irrelevant: cuts fall between distinct scores
    s_desc = np.take_along_axis(s, order, axis=-1)
    shape = s.shape[:-1] + (s.shape[-1] + 1,)
    cum = np.zeros(shape, dtype=np.int64)
    np.cumsum(np.take_along_axis(y, order, axis=-1), axis=-1, out=cum[..., 1:])
    valid = np.ones(shape, dtype=bool)
    np.not_equal(s_desc[..., :-1], s_desc[..., 1:], out=valid[..., 1:-1])
    return s_desc, cum, valid


def _choose(f: np.ndarray, cuts: np.ndarray, k_now: int) -> int:
    """Index into ``cuts`` (ascending) of the cut to take, ``f`` its objective (the module's tie rule)."""
    best = f.max()
    i_now = int(np.searchsorted(cuts, k_now))
    if f[i_now] == best:
        return i_now
    candidates = np.flatnonzero(f == best)
    return int(candidates[np.argmin(np.abs(cuts[candidates] - k_now))])


def _step(cum, valid, ks, positives, k_now, tp_rest, fp_rest, fn_rest) -> Tuple[int, float]:
    """One coordinate step for one label, the others' counts fixed: ``(cut k, its micro-F1)``.

    ``cum`` (N + 1,) its positives among the top k, ``valid`` its valid cuts, ``ks`` = 0..N.
    F1(k) = 2 (TP + tp) / (2 TP + FP + FN + P + k), since fp = k - tp and fn = P - tp;
    invalid cuts get a numerator of 0, so they are never strictly best.
    """
    num = (cum + tp_rest) * valid
    den = ks + (2 * tp_rest + fp_rest + fn_rest + positives)
    if den[0] == 0:      # nothing positive and nothing predicted: F1 = 0, not 0 / 0
        den[0] = 1
    f = num / den
    k = _choose(f, ks, k_now)
    return k, 2.0 * float(f[k])


def global_threshold(y_true, scores) -> Tuple[float, float]:
    """``(threshold, micro-F1)``: the best single threshold shared by all labels.

    All N x L scores are sorted together once; the positives among the top k are
    counted by a binary search in the sorted positive scores; F1 of the top k is
    ``2 tp(k) / (k + P)``. Ties: the same rule as per label, relative to 0.5.
    """
    y, s = check_inputs(y_true, scores)
    flat = s.ravel()
    s_desc = np.sort(flat)[::-1]
    pos = np.sort(flat[y.ravel()])
    inner = np.flatnonzero(s_desc[:-1] != s_desc[1:]) + 1
    cuts = np.concatenate(([0], inner, [flat.size]))
    tp = np.empty(cuts.size, dtype=np.int64)
    tp[0], tp[-1] = 0, pos.size
    tp[1:-1] = pos.size - np.searchsorted(pos, s_desc[inner - 1], side="left")
    den = cuts + pos.size
    den[0] = max(den[0], 1)
    f = tp / den
    k_start = int(np.count_nonzero(flat >= START))
    i = _choose(f, cuts, k_start)
    threshold = START if cuts[i] == k_start else _threshold_at(s_desc, int(cuts[i]))
    return threshold, 2.0 * float(f[i])


def optimise_label(y_true, scores, thresholds, label: int) -> Tuple[float, float]:
    """One coordinate step on its own: the threshold of column ``label`` that maximises
    micro-F1 with every other label at ``thresholds``, and that micro-F1.
    (``tune_thresholds`` takes the same step, on columns it has sorted once.)"""
    y, s = check_inputs(y_true, scores)
    t = as_thresholds(thresholds, y.shape[1])
    tp, fp, fn = label_counts(y, predict(s, t))
    s_desc, cum, valid = _sort_desc(s[:, label], y[:, label])
    k_now = int(fp[label] + tp[label])
    k, f1 = _step(cum, valid, np.arange(cum.size), int(cum[-1]), k_now, int(tp.sum() - tp[label]),
                  int(fp.sum() - fp[label]), int(fn.sum() - fn[label]))
    return (float(t[label]) if k == k_now else _threshold_at(s_desc, k)), f1


def tune_thresholds(y_true, scores, min_positives: int = 5, max_passes: int = 6) -> ThresholdResult:
    """Per-label thresholds maximising micro-F1 on ``(y_true, scores)`` (module doc)."""
    y, s = check_inputs(y_true, scores)
    if max_passes < 0 or min_positives < 0:
        raise UserError(f"max_passes={max_passes}, min_positives={min_positives}: pass counts >= 0")
    n, n_labels = y.shape
    positives = np.count_nonzero(y, axis=0).astype(np.int64)
    f1_before = micro(y, predict(s, START))["f1"]
    g_threshold, f1_global = global_threshold(y, s)
    fallback = positives < min_positives
    thresholds = np.where(fallback, g_threshold, START)

    s_desc, cum, valid = _sort_desc(s.T, y.T)               # (L, N), (L, N + 1), (L, N + 1)
    ks = np.arange(n + 1)
    k = np.count_nonzero(s >= thresholds, axis=0).astype(np.int64)
    tp = cum[np.arange(n_labels), k]
    fp, fn = k - tp, positives - tp
    total = [int(tp.sum()), int(fp.sum()), int(fn.sum())]
    tuned = np.flatnonzero(~fallback)
    f1 = float(f1_from_counts(*total))
    history = [f1]
    passes = 0
    while passes < max_passes and tuned.size:
        changed = 0
        for j in tuned:
            rest = (total[0] - int(tp[j]), total[1] - int(fp[j]), total[2] - int(fn[j]))
            k_new, _ = _step(cum[j], valid[j], ks, int(positives[j]), int(k[j]), *rest)
            if k_new != k[j]:
                k[j], tp[j], thresholds[j] = k_new, cum[j, k_new], _threshold_at(s_desc[j], k_new)
                fp[j], fn[j] = k[j] - tp[j], positives[j] - tp[j]
                total = [rest[0] + int(tp[j]), rest[1] + int(fp[j]), rest[2] + int(fn[j])]
                changed += 1
        passes += 1
        new_f1 = float(f1_from_counts(*total))
        gained, f1 = new_f1 - f1, new_f1
        history.append(f1)
        log.debug("thresholds: pass %d moved %d of %d labels, micro-F1 %.5f (%+.5f)",
                  passes, changed, tuned.size, f1, gained)
        if changed == 0:    # every move is a strict gain: no move, no gain
            break
    else:
        if tuned.size and max_passes:
            log.info("thresholds: still gaining after %d passes (micro-F1 %.5f); raise max_passes to go on",
                     passes, f1)
    result = ThresholdResult(thresholds=thresholds.astype(np.float64), global_threshold=g_threshold,
                             f1_before=f1_before, f1_global=f1_global, f1_after=f1, passes=passes,
                             fallback=fallback, min_positives=min_positives, f1_by_pass=tuple(history))
    log.debug("%s", result.describe())
    return result


@dataclasses.dataclass
class CrossValidation:
    """Honest figures for per-label thresholds: tuned on k - 1 folds, scored on the held-out one.

    Out-of-fold figures pool the held-out counts of all folds (every image is
    decided by thresholds tuned without it), so they compare directly with
    ``f1_before`` and ``f1_in_sample``, which use all images.
    """

    folds: int
    f1_before: float              # 0.5 for every label
    f1_in_sample: float           # tuned on all images and scored on them (optimistic)
    f1_out_of_fold: float         # per-label thresholds, out of fold
    f1_global_out_of_fold: float  # one global threshold, out of fold
    fold_f1: np.ndarray           # (folds,) held-out micro-F1 of each fold, per-label thresholds
    fit: ThresholdResult          # the thresholds tuned on all images: the ones to save and use

    @property
    def gain(self) -> float:
        """What per-label thresholds really add over 0.5."""
        return self.f1_out_of_fold - self.f1_before

    @property
    def optimism(self) -> float:
        """How much the in-sample figure overstates the gain."""
        return self.f1_in_sample - self.f1_out_of_fold

    def describe(self) -> str:
        """One line for a log or a terminal."""
        return (f"thresholds, {self.folds}-fold CV: micro-F1 {self.f1_before:.4f} at 0.5 -> "
                f"{self.f1_out_of_fold:.4f} out of fold ({self.gain:+.4f}; folds "
                f"{self.fold_f1.min():.4f}-{self.fold_f1.max():.4f}); in sample {self.f1_in_sample:.4f} "
                f"(optimism {self.optimism:+.4f}); one global threshold {self.f1_global_out_of_fold:.4f} out of fold")


def cross_validated_gain(y_true, scores, folds: int = 5, seed: int = 0, min_positives: int = 5,
                         max_passes: int = 6) -> CrossValidation:
    """Tune on ``folds - 1`` random folds, score the held-out one, for each fold in turn."""
    y, s = check_inputs(y_true, scores)
    n = y.shape[0]
    if not 2 <= folds <= n:
        raise UserError(f"folds={folds}: pass between 2 and the number of images ({n})")
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    tuned_counts = np.zeros(3, dtype=np.int64)
    global_counts = np.zeros(3, dtype=np.int64)
    fold_f1 = np.zeros(folds)
    for f in range(folds):
        held = fold_of == f
        fit = tune_thresholds(y[~held], s[~held], min_positives=min_positives, max_passes=max_passes)
        counts = np.array([c.sum() for c in label_counts(y[held], predict(s[held], fit.thresholds))])
        tuned_counts += counts
        global_counts += [c.sum() for c in label_counts(y[held], predict(s[held], fit.global_threshold))]
        fold_f1[f] = f1_from_counts(*counts)
    whole = tune_thresholds(y, s, min_positives=min_positives, max_passes=max_passes)
    result = CrossValidation(folds=folds, f1_before=whole.f1_before, f1_in_sample=whole.f1_after,
                             f1_out_of_fold=float(f1_from_counts(*tuned_counts)),
                             f1_global_out_of_fold=float(f1_from_counts(*global_counts)), fold_f1=fold_f1,
                             fit=whole)
    log.debug("%s", result.describe())
    return result


def _label_ids(label_ids) -> np.ndarray:
    ids = np.asarray(label_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or np.unique(ids).size != ids.size:
        raise ValueError(f"label_ids must be distinct integers, one per label column (got {ids[:5]}...)")
    return ids.astype(np.int64)


def save_thresholds(path, label_ids: Sequence[int], result: ThresholdResult) -> None:
    """Write ``thresholds.json`` atomically, keyed by the store's label ids (as strings)."""
    ids = _label_ids(label_ids)
    if ids.size != result.thresholds.size:
        raise ValueError(f"{ids.size} label ids for {result.thresholds.size} thresholds")
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "rule": "a label is predicted when its score >= its threshold",
        "global_threshold": float(result.global_threshold),
        "micro_f1": {"at_0.5": result.f1_before, "global": result.f1_global, "tuned": result.f1_after,
                     "by_pass": list(result.f1_by_pass)},
        "passes": int(result.passes),
        "min_positives": int(result.min_positives),
        "fallback": [str(i) for i in ids[result.fallback]],
        "thresholds": {str(i): float(t) for i, t in zip(ids, result.thresholds)},
    }
    write_text_atomic(Path(path), json.dumps(doc, indent=1) + "\n")


def _examples(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")


def load_thresholds(path, label_ids: Sequence[int]) -> ThresholdResult:
    """Read ``thresholds.json``; thresholds come back in the order of ``label_ids``, which
    must be exactly the file's label ids (else a ``UserError`` naming the difference)."""
    path = Path(path)
    ids = _label_ids(label_ids)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}")
        by_id = {int(k): float(v) for k, v in doc["thresholds"].items()}
        f1 = doc["micro_f1"]
        fallback_ids = {int(k) for k in doc["fallback"]}
        result = dict(global_threshold=float(doc["global_threshold"]), f1_before=float(f1["at_0.5"]),
                      f1_global=float(f1["global"]), f1_after=float(f1["tuned"]), passes=int(doc["passes"]),
                      min_positives=int(doc["min_positives"]), f1_by_pass=tuple(map(float, f1["by_pass"])))
    except FileNotFoundError:
        raise UserError(f"{path}: no such thresholds file; tune the thresholds first or pass the right path") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a readable {FORMAT} v{VERSION} file ({e}); tune the thresholds again") from None
    only_file, only_store = set(by_id) - set(ids.tolist()), set(ids.tolist()) - set(by_id)
    if only_file or only_store:
        raise UserError(f"{path}: label ids differ from the store's: {len(only_file)} only in the file "
                        f"({_examples(only_file)}), {len(only_store)} only in the store "
                        f"({_examples(only_store)}); tune the thresholds again on this store")
    return ThresholdResult(thresholds=np.array([by_id[i] for i in ids.tolist()]),
                           fallback=np.array([i in fallback_ids for i in ids.tolist()], dtype=bool), **result)
