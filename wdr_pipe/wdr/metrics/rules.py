"""Validation scores -> the threshold rule that holds out of sample: ``choose_rule``.

Per-label thresholds tuned on a small validation split over-fit it: on 48
images each label's threshold rests on 2 to 10 positives, and the in-sample
micro-F1 they reach overstates what new images get. ``choose_rule`` weighs
three rules by what they reach **out of fold** (``thresholds.cross_validated_gain``:
tuned on k - 1 folds, scored on the held-out fold, the held-out counts pooled):

- ``per-label``: Fan-Lin thresholds per label, labels under ``min_positives``
  validation positives on the one global threshold;
- ``per-label-min-M``: the same with a higher minimum ``M = HIGHER x min_positives``
  (only the labels with many positives keep their own threshold);
- ``global``: one threshold shared by every label.

Each rule's out-of-fold micro-F1 is the mean over ``repeats`` draws of the
folds (more draws on a small split, where one draw is noisy); the best
wins, and a tie goes to the simpler rule (global, then the higher minimum).
The thresholds kept are the winner's tuned on the whole split; its
out-of-fold figure is the one to quote beside the in-sample one.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np

from .scores import check_inputs
from .thresholds import ThresholdResult, cross_validated_gain, tune_thresholds

HIGHER = 2       # the higher minimum of positives, in multiples of min_positives
FOLDS = 5


@dataclasses.dataclass
class RuleChoice:
    """The rule ``choose_rule`` picked, its thresholds (tuned on every image) and the figures behind it."""

    rule: str                      # "per-label", "per-label-min-M" or "global"
    fit: ThresholdResult           # the thresholds to save and use
    f1_out_of_fold: float          # the winner's out-of-fold micro-F1 (the honest figure)
    out_of_fold: Dict[str, float]  # every rule's
    repeats: int

    def describe(self) -> str:
        others = ", ".join(f"{k} {v:.4f}" for k, v in self.out_of_fold.items())
        return (f"thresholds: {self.rule} (micro-F1 out of fold {self.f1_out_of_fold:.4f}, in sample "
                f"{self.fit.f1_after:.4f}; out of fold by rule: {others})")


def repeats_for(n: int) -> int:
    """Fold draws: 5 under 500 validation images, 2 under 5,000, else 1 (one draw is steady there)."""
    return 5 if n < 500 else 2 if n < 5000 else 1


def global_fit(fit: ThresholdResult) -> ThresholdResult:
    """``fit`` with every label on its global threshold."""
    n = fit.thresholds.size
    return dataclasses.replace(fit, thresholds=np.full(n, fit.global_threshold), fallback=np.ones(n, bool),
                               f1_after=fit.f1_global, passes=0, f1_by_pass=(fit.f1_global,))


def choose_rule(y_true, scores, min_positives: int = 5, seed: int = 0) -> RuleChoice:
    """The rule with the best out-of-fold micro-F1 on ``(y_true, scores)`` (module doc)."""
    y, s = check_inputs(y_true, scores)
    n = y.shape[0]
    higher = HIGHER * min_positives
    own = tune_thresholds(y, s, min_positives=min_positives)
    fits = {"global": global_fit(own)}   # simplest first: a tie goes to it
    per_label = {"per-label": min_positives}
    positives = np.count_nonzero(y, axis=0)
    if ((positives >= min_positives) & (positives < higher)).any():  # else the same thresholds as per-label
        fits[f"per-label-min-{higher}"] = tune_thresholds(y, s, min_positives=higher)
        per_label = {f"per-label-min-{higher}": higher, **per_label}
    fits["per-label"] = own
    if n < 2:  # nothing to hold out: the rule that fits least
        return RuleChoice("global", fits["global"], fits["global"].f1_after, {}, 0)
    repeats = repeats_for(n)
    oof = {k: 0.0 for k in fits}
    for r in range(repeats):
        for name, m in per_label.items():
            cv = cross_validated_gain(y, s, folds=min(FOLDS, n), seed=seed + r, min_positives=m)
            oof[name] += cv.f1_out_of_fold / repeats
            if m == min_positives:
                oof["global"] += cv.f1_global_out_of_fold / repeats
    names = list(fits)
    best = max(names, key=lambda k: (round(oof[k], 12), -names.index(k)))
    return RuleChoice(best, fits[best], oof[best], oof, repeats)


__all__ = ["HIGHER", "RuleChoice", "choose_rule", "global_fit", "repeats_for"]
