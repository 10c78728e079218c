"""Per-class thresholds of a finished run tuned again: ``retune_thresholds(run_dir)`` (``wdr-pipe thresholds``).

The run's best checkpoint scores its validation split once, as ``evaluate``
and ``predict`` score it (``score.scorer.ModelScorer``: the run's data config and
feature key, the model built without its pretrained weights, a ``--deep
fixed`` run from the store's cached embeddings when it trained from them;
probabilities already in ``RUN/eval/<split>/predictions.parquet`` from the
same weights are reused). The thresholds are tuned again on those scores by
``fit_thresholds``, the function the end of training tunes them with, with the
mode and minimum count of positives asked for: ``RUN/thresholds.json`` is
replaced and so are the threshold figures in ``RUN/result.json`` (they stay in
step; ``details["retuned"]`` says how they were made). Weights, settings and
metrics are left alone: ``config.json`` still records how the run trained.

Training validates with the same prediction loop (rows in image-id order), so
the same weights give the same figures, ``cv``'s out-of-fold one included;
scores on another device (or without bf16) may differ in the last digits.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ...cache import open_store
from ...cache.lock import FileLock
from ...errors import UserError
from ...progress import Hook
from ...result import StageResult
from ..checks import LOADER_WORKERS, MIN_POSITIVES, check_device
from ..metrics.rules import choose_rule
from ..metrics.scores import micro, predict
from ..metrics.thresholds import ThresholdResult, cross_validated_gain, save_thresholds, tune_thresholds
from ..runs.folder import RunFolder, open_run, store_identity
from ..score.scorer import ModelScorer
from .config import TrainConfig

log = logging.getLogger("wdr_pipe")
MODES = ("auto", "tune", "cv")
# result.json details that only some modes write: dropped before the new ones go in
_MODE_KEYS = ("val_f1_tuned_out_of_fold", "val_f1_global_out_of_fold", "threshold_rule")
RULE = "val_f1_out_of_fold_"  # + a rule's name: auto's figure of each rule


def fit_thresholds(run: RunFolder, label_ids: np.ndarray, labels: np.ndarray, probs: np.ndarray, mode: str,
                   min_positives: int, seed: int) -> Dict[str, Any]:
    """Per-label thresholds tuned on a run's validation predictions (Fan-Lin, ``metrics/thresholds.py``;
    ``none``: 0.5 for every label), written to ``RUN/thresholds.json``; ``cv`` also measures their gain out
    of fold (5 folds); ``auto`` keeps the rule (per label, per label with a higher minimum of positives, or
    one global threshold) with the best out-of-fold micro-F1 (``metrics/rules.py``) and reports that figure.
    Returns the figures ``result.json`` records."""
    n_labels = labels.shape[1]
    choice = None
    if mode == "auto":
        choice = choose_rule(labels, probs, min_positives=min_positives, seed=seed)
        fit = choice.fit
        log.info("%s", choice.describe())
    elif mode == "none":
        f1 = micro(labels.astype(bool), predict(probs, 0.5))["f1"]
        fit = ThresholdResult(thresholds=np.full(n_labels, 0.5), global_threshold=0.5, f1_before=f1,
                              f1_global=f1, f1_after=f1, passes=0, fallback=np.zeros(n_labels, bool),
                              min_positives=min_positives)
    else:
        fit = tune_thresholds(labels, probs, min_positives=min_positives)
        log.info("%s", fit.describe())
    save_thresholds(run.thresholds, label_ids, fit)
    out = {"thresholds": mode, "val_f1_at_0.5": fit.f1_before, "val_f1_global": fit.f1_global,
           "global_threshold": fit.global_threshold, "val_f1_tuned": fit.f1_after}
    if mode == "cv":
        cv = cross_validated_gain(labels, probs, folds=min(5, len(labels)), seed=seed, min_positives=min_positives)
        log.info("%s", cv.describe())
        out.update(val_f1_tuned_out_of_fold=cv.f1_out_of_fold, val_f1_global_out_of_fold=cv.f1_global_out_of_fold)
    if choice is not None:
        out.update(threshold_rule=choice.rule, val_f1_tuned_out_of_fold=choice.f1_out_of_fold,
                   **{RULE + rule: f1 for rule, f1 in choice.out_of_fold.items()})
    return out


def threshold_lines(tuned: Dict[str, Any]) -> List[str]:
    """The summary lines of ``fit_thresholds``' figures (train's and thresholds' results)."""
    line = (f"validation micro-F1: {tuned['val_f1_at_0.5']:.4f} at 0.5, {tuned['val_f1_global']:.4f} at one threshold "
            f"{tuned['global_threshold']:.3f}, {tuned['val_f1_tuned']:.4f} per class")
    if "threshold_rule" in tuned:
        return [line, f"thresholds kept: {tuned['threshold_rule']}, {tuned['val_f1_tuned']:.4f} in sample, "
                      f"{tuned['val_f1_tuned_out_of_fold']:.4f} out of fold (the figure to expect on new images)"]
    if "val_f1_tuned_out_of_fold" in tuned:
        line += f" ({tuned['val_f1_tuned_out_of_fold']:.4f} out of fold)"
    return [line]


def retune_thresholds(run_dir: Union[str, Path], mode: Optional[str] = None, min_positives: Optional[int] = None,
                      device: Optional[str] = None, loader_workers: Optional[int] = None,
                      progress: Hook = None) -> StageResult:
    """Tune the per-label thresholds of the finished run in ``run_dir`` again on its validation split
    (``mode`` and ``min_positives``: the run's own where not given)."""
    t0 = time.time()
    if mode is not None and mode not in MODES:
        raise UserError(f"--thresholds {mode}: use tune (per label), auto (the rule that holds best out of fold) "
                        "or cv (also their out-of-fold gain)")
    if min_positives is not None:
        MIN_POSITIVES.check("thresholds", min_positives, "min_positives")
    if loader_workers is not None:
        LOADER_WORKERS.check("thresholds", loader_workers, "loader_workers")
    if device is not None:  # None: the run's own
        check_device(device)
    run = open_run(run_dir)
    if run.kind != "train":
        raise UserError(f"--run {run.root}: an ensemble, whose thresholds are tuned when it is made; "
                        "make it again with 'wdr-pipe ensemble' to tune them again")
    if not run.finished:
        raise UserError(f"--run {run.root}: an unfinished run (no result.json); finish it first with "
                        f"'wdr-pipe train --resume {run.root}'")
    cfg = TrainConfig.from_dict({**run.settings, "out": str(run.root)})
    mode = mode or (cfg.thresholds if cfg.thresholds in MODES else "auto")
    min_positives = min_positives or cfg.min_positives
    store = open_store(run.store_path)
    run.check_store(store_identity(store, [cfg.train_split, cfg.val_split], run.feature_key))
    with FileLock(run.lock, "wdr-pipe thresholds"):  # the run's files: one writer at a time, as train
        return _retune(run, store, cfg, mode, min_positives, device, loader_workers, progress, t0)


def _retune(run: RunFolder, store, cfg: TrainConfig, mode: str, min_positives: int, device: Optional[str],
            loader_workers: Optional[int], progress: Hook, t0: float) -> StageResult:
    scorer = ModelScorer(run, checkpoint="best", device=cfg.device if device is None else device,
                         batch_size=cfg.batch_size,
                         loader_workers=cfg.loader_workers if loader_workers is None else loader_workers)
    scored = scorer.score_split(store, cfg.val_split, labelled=True, progress=progress)
    tuned = fit_thresholds(run, run.label_ids, scored.labels, scored.probs, mode, min_positives, cfg.seed)
    retuned = {"by": "wdr-pipe thresholds", "thresholds": mode, "min_positives": min_positives,
               "device": str(scorer.device), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    done = run.read_result()
    for k in [k for k in done.details if k in _MODE_KEYS or k.startswith(RULE)]:
        done.details.pop(k)
    done.details.update(tuned, retuned=retuned)
    run.write_result(done)
    n_val = int(len(scored.ids))
    log.info("%s: thresholds tuned again (%s, min positives %d) on %d validation images", run.root, mode,
             min_positives, n_val)
    return StageResult(stage="thresholds", key=run.doc.get("key", cfg.key()), output=str(run.thresholds),
                       seconds=time.time() - t0, ran=1, counts={"labels": len(run.label_ids), "val_images": n_val},
                       details={**tuned, "retuned": retuned}, summary=threshold_lines(tuned))


__all__ = ["fit_thresholds", "retune_thresholds", "threshold_lines"]
