"""wdr_pipe.wdr.metrics.thresholds: each step against brute force, the cycle's monotonicity,
the rare-label fallback, cross-validation and thresholds.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wdr_pipe.errors import UserError
from wdr_pipe.wdr.metrics import scores as metrics
from wdr_pipe.wdr.metrics.thresholds import (ThresholdResult, cross_validated_gain, global_threshold, load_thresholds,
                                     optimise_label, save_thresholds, tune_thresholds)


def problem(n, n_labels, seed, step=None, signal=0.3):
    """Random (y_true uint8, scores float32), scores correlated with labels; ``step``
    rounds scores to a grid to make ties."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < rng.uniform(0.05, 0.5, n_labels)).astype(np.uint8)
    s = np.clip(signal * y + rng.random((n, n_labels)) * (1 - signal), 0, 1)
    if step:
        s = np.round(s / step) * step
    return y, s.astype(np.float32)


def brute_f1(y, pred):
    tp = np.count_nonzero(y & pred)
    den = 2 * tp + np.count_nonzero(pred & ~y) + np.count_nonzero(y & ~pred)
    return 2 * tp / den if den else 0.0


def brute_step(y, s, t, j):
    """Every cut of column j (a threshold at each distinct score, and one above all),
    the others fixed: (best F1, the k the module's tie rule picks, or None for 'keep t[j]')."""
    y = y.astype(bool)
    k_now = int(np.count_nonzero(s[:, j] >= t[j]))
    by_k = {}
    for c in list(np.unique(s[:, j])) + [np.inf]:
        pred = s >= t
        pred[:, j] = s[:, j] >= c
        by_k[int(pred[:, j].sum())] = brute_f1(y, pred)
    best = max(by_k.values())
    ks = sorted(k for k, f in by_k.items() if f == best)
    if k_now in ks:
        return best, None
    return best, min(ks, key=lambda k: (abs(k - k_now), k))


@pytest.mark.parametrize("seed", range(40))
def test_one_step_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    y, s = problem(30, 4, seed, step=[0.05, 0.1, 0.25][seed % 3])
    t = np.where(rng.random(4) < 0.5, 0.5, rng.choice(s.ravel(), 4))  # on, off and at scores
    for j in range(4):
        best, k_pick = brute_step(y, s, t, j)
        new_t, f1 = optimise_label(y, s, t, j)
        assert f1 == pytest.approx(best, abs=1e-12)
        t2 = t.copy()
        t2[j] = new_t
        assert metrics.micro_f1(y, metrics.predict(s, t2)) == pytest.approx(best, abs=1e-12)
        if k_pick is None:
            assert new_t == t[j]                     # current cut among the best: threshold kept
        else:
            assert np.count_nonzero(s[:, j] >= new_t) == k_pick
            values = np.unique(s[:, j])
            assert not np.any(values == new_t) or new_t == values.max()  # between scores, not on one


@pytest.mark.parametrize("t_now,k_want", [(0.55, 2), (0.65, 2), (0.45, 6), (0.75, None), (0.3, None)])
def test_tie_rule_fewest_flips_then_higher_threshold(t_now, k_want):
    # one label, F1(k) = 2 tp(k) / (k + P) is best (1/2) at k = 2 and at k = 6, and nowhere else
    s = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]])
    y = np.array([[0], [1], [0], [0], [0], [1]], dtype=np.uint8)
    t, f1 = optimise_label(y, s, [t_now], 0)
    assert f1 == 0.5
    if k_want is None:
        assert t == t_now                              # already at a best cut: kept as it is
    else:                                              # from k = 4 both are 2 flips away: the higher one
        assert np.count_nonzero(s >= t) == k_want


def test_tiny_problems_with_tied_optima():
    # 8 x 2 on a 0.25 grid: 6 of these 600 steps have several best cuts, none of them the current one
    for seed in range(300):
        rng = np.random.default_rng(seed)
        y, s = problem(8, 2, seed, step=0.25, signal=0.2)
        t = rng.choice([0.1, 0.5, 0.9], 2)
        for j in range(2):
            best, k_pick = brute_step(y, s, t, j)
            new_t, f1 = optimise_label(y, s, t, j)
            assert f1 == pytest.approx(best, abs=1e-12), (seed, j)
            assert new_t == t[j] if k_pick is None else np.count_nonzero(s[:, j] >= new_t) == k_pick, (seed, j)


@pytest.mark.parametrize("min_positives", [0, 4])
@pytest.mark.parametrize("seed", range(5))
def test_a_pass_is_the_sequence_of_single_steps(seed, min_positives):
    y, s = problem(60, 7, seed, step=0.05)
    y[:, 6] = 0
    y[:3, 6] = 1                                  # a rare label
    one = tune_thresholds(y, s, min_positives=min_positives, max_passes=1)
    t = np.where(one.fallback, one.global_threshold, 0.5)
    for j in np.flatnonzero(~one.fallback):
        t[j] = optimise_label(y, s, t, j)[0]
    np.testing.assert_array_equal(one.thresholds, t)


@pytest.mark.parametrize("seed", range(60))
def test_cycles_never_lower_micro_f1(seed):
    rng = np.random.default_rng(1000 + seed)
    n, n_labels = int(rng.integers(5, 120)), int(rng.integers(1, 12))
    y, s = problem(n, n_labels, seed, step=[None, 0.1][seed % 2], signal=rng.uniform(0, 0.6))
    if seed % 3 == 2:
        s = s.astype(np.float64)
    res = tune_thresholds(y, s, min_positives=0, max_passes=20)
    assert np.all(np.diff(res.f1_by_pass) >= 0)
    assert res.f1_after >= res.f1_before
    assert res.f1_after == res.f1_by_pass[-1]
    if res.passes < 20:   # converged: no single label can still gain
        for j in range(n_labels):
            assert optimise_label(y, s, res.thresholds, j)[1] == pytest.approx(res.f1_after, abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_figures_equal_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    y, s = problem(300, 15, seed, step=[None, 0.02][seed % 2])
    res = tune_thresholds(y, s)
    for t, f1 in ((0.5, res.f1_before), (res.global_threshold, res.f1_global), (res.thresholds, res.f1_after)):
        pred = metrics.predict(s, t).astype(np.uint8)
        assert f1 == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
        assert metrics.micro_f1(y, pred) == pytest.approx(f1, abs=1e-12)
    assert res.f1_after > res.f1_before
    assert f"{res.f1_after:.4f} per label" in res.describe()


@pytest.mark.parametrize("seed", range(10))
def test_global_threshold_equals_brute_force(seed):
    y, s = problem(40, 5, seed, step=0.1 if seed % 2 else None, signal=0.1)
    s = s.astype(np.float64) if seed % 3 == 2 else s
    t, f1 = global_threshold(y, s)
    best = max(brute_f1(y.astype(bool), s >= c) for c in list(np.unique(s)) + [np.inf])
    assert f1 == pytest.approx(best, abs=1e-12)
    assert brute_f1(y.astype(bool), s >= t) == pytest.approx(best, abs=1e-12)


def test_rare_labels_get_the_global_threshold():
    y, s = problem(400, 10, seed=3)
    for j, count in enumerate([0, 1, 2, 4]):
        y[:, j] = 0
        y[np.arange(count) * 7, j] = 1
    res = tune_thresholds(y, s, min_positives=5)
    assert res.fallback.tolist() == [True] * 4 + [False] * 6
    assert np.all(res.thresholds[:4] == res.global_threshold)
    assert res.global_threshold == global_threshold(y, s)[0]
    assert not np.any(res.thresholds[4:] == res.global_threshold)
    everyone = tune_thresholds(y, s, min_positives=0)
    assert not everyone.fallback.any()
    assert everyone.thresholds[0] > s[:, 0].max()     # no positive: predict nothing


def test_thresholds_are_exact_in_float32_and_at_the_edges():
    a = np.float32(0.3)
    b = np.nextafter(a, np.float32(1))                # adjacent float32 values: the midpoint rounds
    s = np.array([[a], [b], [b], [1.0], [0.0]], dtype=np.float32)
    y = np.array([[0], [1], [1], [1], [0]], dtype=np.uint8)
    t, _ = optimise_label(y, s, [0.9], 0)
    assert np.count_nonzero(s[:, 0] >= t) == 3 and np.float32(t) == t
    assert np.count_nonzero(s[:, 0] >= np.float32(t)) == 3
    y_none = np.concatenate([np.zeros_like(y), y], axis=1)   # label 1 predicted perfectly at b
    t0, f0 = optimise_label(y_none, np.concatenate([s, s], axis=1), [0.2, b], 0)
    assert t0 > 1.0 and f0 == 1.0                     # best: predict nothing, above a score of 1
    y_all = np.ones_like(y)
    t_all, f_all = optimise_label(y_all, s, [0.9], 0)  # best: predict all, at or below the minimum
    assert t_all <= 0.0 and f_all == 1.0


def test_cross_validated_gain_is_honest():
    y, s = problem(1500, 20, seed=5, signal=0.25)
    cv = cross_validated_gain(y, s, folds=5, seed=0)
    full = tune_thresholds(y, s)
    assert cv.f1_before == full.f1_before and cv.f1_in_sample == full.f1_after
    np.testing.assert_array_equal(cv.fit.thresholds, full.thresholds)
    assert cv.f1_before < cv.f1_out_of_fold < cv.f1_in_sample
    assert cv.gain > 0 and cv.optimism > 0
    assert cv.fold_f1.shape == (5,) and np.all((cv.fold_f1 > 0) & (cv.fold_f1 < 1))
    assert 0 < cv.f1_global_out_of_fold < 1
    assert "5-fold" in cv.describe() and f"{cv.f1_out_of_fold:.4f}" in cv.describe()
    again = cross_validated_gain(y, s, folds=5, seed=0)
    assert again.f1_out_of_fold == cv.f1_out_of_fold
    with pytest.raises(UserError, match="folds=1"):
        cross_validated_gain(y, s, folds=1)


def test_save_load_round_trip(tmp_path):
    y, s = problem(200, 6, seed=2)
    y[:, 0] = 0
    res = tune_thresholds(y, s)
    ids = np.array([3, 5, 8, 13, 21, 34], dtype=np.int32)
    path = tmp_path / "thresholds.json"
    save_thresholds(path, ids, res)
    assert [p.name for p in tmp_path.iterdir()] == ["thresholds.json"]
    doc = json.loads(path.read_text())
    assert list(doc["thresholds"]) == ["3", "5", "8", "13", "21", "34"]
    assert doc["fallback"] == ["3"] and doc["global_threshold"] == res.global_threshold
    back = load_thresholds(path, ids)
    assert isinstance(back, ThresholdResult)
    np.testing.assert_array_equal(back.thresholds, res.thresholds)
    np.testing.assert_array_equal(back.fallback, res.fallback)
    for field in ("global_threshold", "f1_before", "f1_global", "f1_after", "passes", "min_positives", "f1_by_pass"):
        assert getattr(back, field) == getattr(res, field), field
    shuffled = load_thresholds(path, ids[::-1])
    np.testing.assert_array_equal(shuffled.thresholds, res.thresholds[::-1])


def test_load_errors_name_the_file_and_the_difference(tmp_path):
    y, s = problem(100, 4, seed=1)
    path = tmp_path / "thresholds.json"
    save_thresholds(path, [1, 2, 3, 4], tune_thresholds(y, s))
    with pytest.raises(UserError, match=r"thresholds.json: label ids differ .* 1 only in the file \(4\), "
                                        r"2 only in the store \(7, 9\)"):
        load_thresholds(path, [1, 2, 3, 7, 9])
    with pytest.raises(UserError, match="no such thresholds file"):
        load_thresholds(tmp_path / "missing.json", [1, 2, 3, 4])
    path.write_text("{not json")
    with pytest.raises(UserError, match="thresholds.json: not a readable"):
        load_thresholds(path, [1, 2, 3, 4])


def test_bad_arguments():
    y, s = problem(20, 3, seed=0)
    with pytest.raises(UserError, match="max_passes=-1"):
        tune_thresholds(y, s, max_passes=-1)
    with pytest.raises(UserError, match="sigmoid"):
        tune_thresholds(y, s * 4)
    res = tune_thresholds(y, s, min_positives=0, max_passes=0)
    assert res.passes == 0 and np.all(res.thresholds == 0.5) and res.f1_after == res.f1_before


# -- the rule that holds out of sample (metrics/rules.py) -------------------------------------------
def test_auto_rule_keeps_per_label_thresholds_where_labels_differ_and_one_threshold_where_they_overfit():
    from wdr_pipe.wdr.metrics.rules import choose_rule

    rng = np.random.default_rng(0)
    # 600 images, labels whose scores sit on different scales: each needs its own threshold
    y = (rng.random((600, 6)) < 0.3).astype(np.uint8)
    scale = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 1.0])
    s = (np.clip(0.5 * y + 0.5 * rng.random(y.shape), 0, 1) * scale).astype(np.float32)
    own = choose_rule(y, s, min_positives=5, seed=0)
    assert own.rule == "per-label" and own.repeats == 2
    assert set(own.out_of_fold) == {"global", "per-label"}  # min 10 would keep the same thresholds: not tried
    assert own.out_of_fold["per-label"] > own.out_of_fold["global"] + 0.05
    assert own.fit.f1_after == tune_thresholds(y, s, min_positives=5).f1_after
    # 40 images, labels alike and a few positives each: per-label thresholds fit noise, one threshold holds
    rng = np.random.default_rng(0)
    y = (rng.random((40, 8)) < 0.3).astype(np.uint8)
    s = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1).astype(np.float32)
    one = choose_rule(y, s, min_positives=2, seed=0)
    assert one.out_of_fold[one.rule] == max(one.out_of_fold.values()) == one.f1_out_of_fold
    assert one.rule == "global", one.describe()
    assert np.all(one.fit.thresholds == one.fit.global_threshold) and one.fit.fallback.all()
    assert one.fit.f1_after == one.fit.f1_global and one.repeats == 5
    assert "out of fold" in one.describe()
