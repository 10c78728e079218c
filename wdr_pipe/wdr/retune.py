"""Per-class thresholds of a finished run tuned again: ``retune_thresholds(run_dir)`` (``wdr-pipe thresholds``).

The run's best checkpoint scores its validation split once, as ``evaluate``
and ``predict`` score it (``scorer.ModelScorer``: the run's data config and
feature key, the model built without its pretrained weights, a ``--deep
fixed`` run from the store's cached embeddings when it trained from them;
probabilities already in ``RUN/eval/<split>/predictions.parquet`` from the
same weights are reused). The thresholds are tuned again on those scores
(``trainsetup.thresholds``, as at the end of training) with the mode and
minimum count of positives asked for: ``RUN/thresholds.json`` is replaced and
so are the threshold figures in ``RUN/result.json`` (they stay in step;
``details["retuned"]`` says how they were made). Weights, settings and
metrics are left alone: ``config.json`` still records how the run trained.

Scores on another device (or without bf16) may differ in the last digits.
The out-of-fold figure of ``cv`` draws its folds over the images in id
order, so it may differ a little from the one training reported.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

from ..cache import open_store
from ..errors import UserError
from ..progress import Hook
from ..result import StageResult
from . import trainsetup as setup
from .checkpoint import store_identity
from .checks import MIN_POSITIVES, WORKERS, check_device
from .runs import open_run
from .scorer import ModelScorer
from .trainconfig import TrainConfig

log = logging.getLogger("wdr_pipe")
MODES = ("tune", "cv")
# result.json details that only some modes write: dropped before the new ones go in
_MODE_KEYS = ("val_f1_tuned_out_of_fold", "val_f1_global_out_of_fold")


def retune_thresholds(run_dir: Union[str, Path], mode: str = "tune", min_positives: int = 5,
                      device: Optional[str] = None, workers: Optional[int] = None,
                      progress: Hook = None) -> StageResult:
    """Tune the per-label thresholds of the finished run in ``run_dir`` again on its validation split."""
    t0 = time.time()
    if mode not in MODES:
        raise UserError(f"--thresholds {mode}: use tune (per label) or cv (also their out-of-fold gain)")
    MIN_POSITIVES.check("thresholds", min_positives, "min_positives")
    if workers is not None:
        WORKERS.check("thresholds", workers, "workers")
    if device is not None:  # None: the run's own
        check_device(device)
    run = open_run(run_dir)
    if run.kind != "train":
        raise UserError(f"--run {run.root}: an ensemble, whose thresholds are tuned when it is made; "
                        "make it again with 'wdr-pipe ensemble' to tune them again")
    if not run.dir.finished:
        raise UserError(f"--run {run.root}: an unfinished run (no result.json); finish it first with "
                        f"'wdr-pipe train --resume {run.root}'")
    cfg = TrainConfig.from_dict({**run.settings, "out": str(run.root), "thresholds": mode,
                                 "min_positives": min_positives})
    store = open_store(run.store_path)
    run.dir.check_store(store_identity(store, [cfg.train_split, cfg.val_split], run.feature_key))
    scorer = ModelScorer(run, checkpoint="best", device=cfg.device if device is None else device,
                         batch_size=cfg.batch_size,
                         workers=cfg.workers if workers is None else workers)
    scored = scorer.score_split(store, cfg.val_split, labelled=True, progress=progress)
    tuned = setup.thresholds(cfg, SimpleNamespace(label_ids=run.label_ids),
                             {"labels": scored.labels, "probs": scored.probs}, run.dir)
    retuned = {"by": "wdr-pipe thresholds", "thresholds": mode, "min_positives": min_positives,
               "device": str(scorer.device), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    done = run.dir.read_result()
    for k in _MODE_KEYS:
        done.details.pop(k, None)
    done.details.update(tuned, retuned=retuned)
    run.dir.write_result(done)
    n_val = int(len(scored.ids))
    log.info("%s: thresholds tuned again (%s, min positives %d) on %d validation images", run.root, mode,
             min_positives, n_val)
    return StageResult(stage="thresholds", key=run.doc.get("key", cfg.key()), output=str(run.dir.thresholds),
                       seconds=time.time() - t0, ran=1, counts={"labels": len(run.label_ids), "val_images": n_val},
                       details={**tuned, "retuned": retuned})


__all__ = ["retune_thresholds"]
