"""Per-class thresholds of a finished run tuned again: ``retune_thresholds(run_dir)`` (``wdr-pipe thresholds``).

The run's best checkpoint predicts its validation split once, as at the end
of training (the same store, label columns, data config and loader), and the
thresholds are tuned again on those scores with the mode (``tune`` or ``cv``)
and minimum count of positives asked for. ``RUN/thresholds.json`` is replaced
and so are the threshold figures in ``RUN/result.json`` (they stay in step;
``details["retuned"]`` says how they were made). The run's settings, weights
and metrics are left alone: ``config.json`` still records how it was trained.

The model is built without its pretrained weights (every tensor comes from
the checkpoint), so a run trained from ``--weights FILE`` re-tunes even after
the file has moved. Without ``device`` it runs where the run's settings say;
scores on another device (or without bf16) may differ in the last digits.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Optional, Union

import torch

from ..cache import open_store
from ..errors import UserError
from ..progress import Hook, Progress, report
from ..result import StageResult
from . import trainsetup as setup
from .checkpoint import RunDir, eval_weights, load_checkpoint, read_json, store_identity
from .data import make_loader
from .trainconfig import TrainConfig
from .transforms import DataConfig

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
    if isinstance(min_positives, bool) or not isinstance(min_positives, int) or min_positives < 1:
        raise UserError(f"--min-positives {min_positives}: use a whole number of 1 or more")
    run = RunDir(run_dir)
    if not run.is_run():
        raise UserError(f"{run.root}: not a wdr-pipe run folder (no config.json of a run); "
                        "pass the --out folder of an earlier 'wdr-pipe train'")
    if not run.finished:
        raise UserError(f"{run.root}: an unfinished run (no result.json); finish it first with "
                        f"'wdr-pipe train --resume {run.root}'")
    doc = read_json(run.config)
    overrides = {"out": str(run.root), "thresholds": mode, "min_positives": min_positives,
                 "pretrained": False, "weights": None}  # weights: from the checkpoint
    if device is not None:
        overrides["device"] = device
    if workers is not None:
        overrides["workers"] = workers
    cfg = TrainConfig.from_dict({**doc["settings"], **overrides})
    dist = setup.Dist(cfg.device)
    try:
        tuned, n_val, n_labels = _retune(run, doc, cfg, dist, progress)
    finally:
        dist.stop()
    retuned = {"by": "wdr-pipe thresholds", "thresholds": mode, "min_positives": min_positives,
               "device": str(dist.device), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if dist.rank == 0:
        done = run.read_result()
        for k in _MODE_KEYS:
            done.details.pop(k, None)
        done.details.update(tuned, retuned=retuned)
        run.write_result(done)
    return StageResult(stage="thresholds", key=doc.get("key", cfg.key()), output=str(run.thresholds),
                       seconds=time.time() - t0, ran=1, counts={"labels": n_labels, "val_images": n_val},
                       details={**tuned, "retuned": retuned})


def _retune(run: RunDir, doc: dict, cfg: TrainConfig, dist: "setup.Dist", progress: Hook):
    store = open_store(cfg.store)
    data = setup.prepare_data(store, cfg, need_wide_stats=False)  # wide mean/std: the checkpoint's buffers
    run.check_store(store_identity(store, [cfg.train_split, cfg.val_split], data.feature_key))
    ckpt = load_checkpoint(run.best)
    if [int(i) for i in ckpt["label_ids"]] != data.label_ids.tolist():
        raise UserError(f"{run.best}: predicts other labels than the store's {cfg.val_split} split gives "
                        f"(--labels {cfg.labels}); re-tune against the store the run was trained on")
    device = dist.device
    model = setup.build(cfg, data)
    model.load_state_dict(eval_weights(ckpt))
    model.to(device, memory_format=torch.channels_last)
    dcfg = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc["data_config"].items()})
    loader = make_loader(store, cfg.val_split, cfg.batch_size, train=False, feature_key=data.feature_key,
                         config=dcfg, seed=cfg.seed, rank=dist.rank, world_size=dist.world, device=device,
                         num_workers=cfg.workers)
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    scored = setup.predict(model, _Reporting(loader, progress), data.columns, amp, dist,
                           setup.criterion(cfg, data.pos_weight, device))
    tuned = setup.thresholds(cfg, data, scored, run) if dist.rank == 0 else {}
    dist.barrier()
    log.info("%s: thresholds tuned again (%s, min positives %d) on %d validation images", run.root, cfg.thresholds,
             cfg.min_positives, len(scored["ids"]))
    return tuned, int(len(scored["ids"])), int(len(data.label_ids))


@dataclasses.dataclass
class _Reporting:
    """A loader that reports each batch it hands out to the progress hook."""

    loader: object
    progress: Hook

    @property
    def device(self):
        return self.loader.device

    def __iter__(self):
        total = len(self.loader)
        for i, batch in enumerate(self.loader, 1):
            yield batch
            report(self.progress, Progress(stage="thresholds", done=i, total=total, message="predicting validation"))


__all__ = ["retune_thresholds"]
