"""wdr_pipe.wdr.metrics against scikit-learn (the oracle) on random multi-label problems."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from wdr_pipe.errors import UserError
from wdr_pipe.wdr.metrics import scores as metrics

skm = pytest.importorskip("sklearn.metrics")


def problem(n, n_labels, seed, empty_labels=0, ties=False):
    """Random (y_true uint8, scores) with skewed label frequencies; the last
    ``empty_labels`` columns have no positive; ``ties`` rounds scores to 1/10."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.02, 0.6, n_labels)
    y = (rng.random((n, n_labels)) < freq).astype(np.uint8)
    if empty_labels:
        y[:, n_labels - empty_labels:] = 0
    s = np.clip(0.35 * y + rng.random((n, n_labels)) * 0.65, 0, 1)
    if ties:
        s = np.round(s, 1)
    return y, s.astype(np.float32)


# scikit-learn reads a single column as a binary problem, not a multi-label one: L >= 2 here.
CASES = [
    (1, 3, 0, False), (7, 2, 0, False), (50, 5, 1, True), (200, 12, 3, False),
    (200, 12, 2, True), (31, 40, 5, True), (500, 4, 0, False),
]


def sk(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("n,n_labels,empty,ties", CASES)
@pytest.mark.parametrize("threshold", [0.5, 0.3, "vector", "none"])
def test_summary_equals_sklearn(n, n_labels, empty, ties, threshold):
    y, s = problem(n, n_labels, seed=n * 100 + n_labels, empty_labels=empty, ties=ties)
    if threshold == "vector":
        t = np.random.default_rng(1).uniform(0.2, 0.8, n_labels)
    elif threshold == "none":
        t = 1.5  # all-zero predictions
    else:
        t = threshold
    pred = (s >= np.broadcast_to(t, (n_labels,))).astype(np.uint8)
    got = metrics.summary(y, s, t)
    for avg in ("micro", "macro"):
        assert got[f"{avg}_f1"] == pytest.approx(
            sk(skm.f1_score, y, pred, average=avg, zero_division=0), abs=1e-12)
        assert got[f"{avg}_precision"] == pytest.approx(
            sk(skm.precision_score, y, pred, average=avg, zero_division=0), abs=1e-12)
        assert got[f"{avg}_recall"] == pytest.approx(
            sk(skm.recall_score, y, pred, average=avg, zero_division=0), abs=1e-12)
    assert got["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert got["hamming_accuracy"] == pytest.approx(1 - skm.hamming_loss(y, pred), abs=1e-12)
    has_pos = y.sum(axis=0) > 0
    aps = [skm.average_precision_score(y[:, j], s[:, j]) for j in np.flatnonzero(has_pos)]
    if aps:
        assert got["mean_average_precision"] == pytest.approx(np.mean(aps), abs=1e-12)
    else:
        assert np.isnan(got["mean_average_precision"])
    assert got["labels_with_positives"] == has_pos.sum()
    assert (got["images"], got["labels"]) == (n, n_labels)
    assert metrics.micro_f1(y, pred) == pytest.approx(got["micro_f1"], abs=1e-15)


@pytest.mark.parametrize("n,n_labels,empty,ties", CASES)
def test_per_label_equals_sklearn(n, n_labels, empty, ties):
    y, s = problem(n, n_labels, seed=n + n_labels, empty_labels=empty, ties=ties)
    t = np.linspace(0.1, 0.9, n_labels)
    pred = (s >= t).astype(np.uint8)
    got = metrics.per_label(y, s, t)
    for key, fn in (("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)):
        want = sk(fn, y, pred, average=None, zero_division=0)
        np.testing.assert_allclose(got[key], want, atol=1e-12, err_msg=key)
        one_by_one = [sk(fn, y[:, j], pred[:, j], zero_division=0) for j in range(n_labels)]
        np.testing.assert_allclose(got[key], one_by_one, atol=1e-12, err_msg=key)
    np.testing.assert_array_equal(got["support"], y.sum(axis=0))
    np.testing.assert_array_equal(got["predicted"], pred.sum(axis=0))
    np.testing.assert_array_equal(got["tp"], (y & pred).sum(axis=0))
    np.testing.assert_array_equal(got["threshold"], t)
    for j in range(n_labels):
        if y[:, j].any():
            assert got["average_precision"][j] == pytest.approx(
                skm.average_precision_score(y[:, j], s[:, j]), abs=1e-12), j
        else:
            assert np.isnan(got["average_precision"][j])


def test_average_precision_heavy_ties_and_constant_scores():
    rng = np.random.default_rng(3)
    y = (rng.random((300, 6)) < 0.3).astype(np.uint8)
    s = rng.integers(0, 3, (300, 6)) / 2.0   # three distinct values
    s[:, 0] = 0.7                             # one constant column
    got = metrics.average_precision(y, s)
    want = [skm.average_precision_score(y[:, j], s[:, j]) for j in range(6)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_bool_and_float_labels_accepted():
    y, s = problem(40, 5, seed=9)
    a = metrics.summary(y, s, 0.5)
    assert metrics.summary(y.astype(bool), s, 0.5) == a
    assert metrics.summary(y.astype(np.float64), s.astype(np.float64), 0.5) == pytest.approx(a)


def test_threshold_rule_is_greater_or_equal():
    y = np.array([[1, 0]], dtype=np.uint8)
    s = np.array([[0.5, 0.5]], dtype=np.float32)
    assert metrics.predict(s, 0.5).tolist() == [[True, True]]
    assert metrics.per_label(y, s, [0.5, 0.51])["predicted"].tolist() == [1, 0]


@pytest.mark.parametrize("y,s,t,match", [
    (np.zeros(4), np.zeros(4), 0.5, "y_true: expected an"),
    (np.zeros((4, 2)), np.zeros((4, 3)), 0.5, "scores: shape"),
    (np.full((4, 2), 2), np.zeros((4, 2)), 0.5, "other than 0 and 1"),
    (np.zeros((4, 2)), np.full((4, 2), 3.0), 0.5, "sigmoid"),
    (np.zeros((4, 2)), np.full((4, 2), np.nan), 0.5, "NaN"),
    (np.zeros((4, 2)), np.zeros((4, 2)), [0.5, 0.5, 0.5], "thresholds: shape"),
    (np.zeros((0, 2)), np.zeros((0, 2)), 0.5, "no images"),
])
def test_bad_inputs_are_user_errors(y, s, t, match):
    with pytest.raises(UserError, match=match):
        metrics.summary(y, s, t)
