"""The accepted range of every numeric setting of the model commands, and the device names.

As ``pipeline/checks.py`` does for the data stages: each config checks itself with its table in
``__post_init__`` (``wdr_pipe.checks.check_all``) and the CLI builds its click types from the
same ``Bound`` (``cli/common.bounded``), so both refuse the same values, naming the option, the
value and the range: ``train config: lr 0 (--lr): use more than 0 up to 10``. A setting several
commands share (``--batch-size``, ``--loader-workers``, ``--seed`` ...) has one ``Bound``, said once here.
(This module imports nothing heavy, so the CLI reads the ranges without loading torch.)
"""
from __future__ import annotations

import re
from dataclasses import replace

from ..checks import Bound
from ..errors import BadSetting

# -- shared by several commands -----------------------------------------------------
BATCH_SIZE = Bound("--batch-size", 1, 65_536, unit="images")
LOADER_WORKERS = Bound("--loader-workers", 0, 64)    # loader worker processes; 0: load in the main process
IMAGE_SIZE = Bound("--image-size", 16, 4096, unit="px", optional=True)  # None: the backbone's (or run's) own
SEED = Bound("--seed", 0, 2**32 - 1)                 # numpy's seeds
MIN_POSITIVES = Bound("--min-positives", 1, 1_000_000)
SCORING_BOUNDS = {"batch_size": BATCH_SIZE, "loader_workers": LOADER_WORKERS}  # evaluate, predict, ensemble

# ModelConfig (model/network.py); train's flags of the same names
MODEL_BOUNDS = {
    "freeze_first": Bound("--freeze-first", 0, 10_000, unit="weight layers"),
    "head_hidden": Bound("--head-hidden", 1, 65_536),
    "head_dropout": Bound("--head-dropout", 0, 1, integer=False, hi_open=True),
    "drop_rate": Bound("--drop-rate", 0, 1, integer=False, hi_open=True),
    "wide_hidden": Bound("--wide-hidden", 1, 65_536),
    "rnn_hidden": Bound("--rnn-hidden", 1, 4096),
    "embed_dim": Bound("embed_dim", 1, 1024),
}

# TrainConfig (train/config.py): its own settings; the model's are MODEL_BOUNDS, checked by ModelConfig
# (optional ones: None is the recipe's value, train/recipe.py; --lr and --head-lr also take auto)
TRAIN_BOUNDS = {
    "image_size": IMAGE_SIZE,
    "epochs": Bound("--epochs", 1, 100_000, optional=True),
    "batch_size": replace(BATCH_SIZE, optional=True),
    "lr": Bound("--lr", 0, 10, integer=False, lo_open=True, optional=True),
    "head_lr": Bound("--head-lr", 0, 10, integer=False, lo_open=True, optional=True),
    "weight_decay": Bound("--weight-decay", 0, 10, integer=False, optional=True),
    "warmup_epochs": Bound("--warmup-epochs", 0, 100_000, integer=False, optional=True),  # and fewer than --epochs
    "layer_decay": Bound("--layer-decay", 0, 1, integer=False, lo_open=True, optional=True),
    "patience": Bound("--patience", 0, 1_000_000, unit="validations", optional=True),
    "grad_accum": Bound("--grad-accum", 1, 1024, unit="batches"),
    "clip_grad": Bound("--clip-grad", 0, 1_000_000, integer=False, lo_open=True, optional=True),
    "ema_decay": Bound("--ema-decay", 0, 1, integer=False, lo_open=True, hi_open=True),
    "seed": SEED,
    "loader_workers": LOADER_WORKERS,
    "checkpoint_every": Bound("--checkpoint-every", 0, 1_000_000_000, unit="steps"),
    "eval_every": Bound("--eval-every", 0, 1_000_000_000, unit="steps", optional=True),
    "min_positives": MIN_POSITIVES,
}
# --pos-weight K (or 'stats'): checked once the text is read as a number
POS_WEIGHT = Bound("--pos-weight", 0, 1_000_000, integer=False, lo_open=True)

# EvalConfig (score/evaluate.py)
EVAL_BOUNDS = {**SCORING_BOUNDS,
               "saliency": Bound("--saliency", 0, 100, unit="images"),
               "saliency_labels": Bound("saliency_labels", 1, 100)}

# PredictConfig (score/predict.py); --top: labels listed per image of 'predict IMAGE...'
PREDICT_BOUNDS = dict(SCORING_BOUNDS)
TOP = Bound("--top", 1, 10_000, unit="labels")

# EnsembleConfig (score/ensemble.py)
ENSEMBLE_BOUNDS = {**SCORING_BOUNDS,
                   "folds": Bound("--folds", 2, 100),
                   "seed": SEED,
                   "C": Bound("C", 0, 1_000_000, integer=False, lo_open=True),
                   "min_positives": replace(MIN_POSITIVES, option="min_positives")}  # no flag of its own

# EmbedSpec (embed/stage.py) and the embed / similar commands
EMBED_BOUNDS = {"image_size": IMAGE_SIZE}
EMBED_BATCH = Bound("--batch-size", 1, 65_536, unit="images", optional=True)  # None: sized to the device
K = Bound("-k", 1, 10_000, unit="images")

# -- devices ----------------------------------------------------------------------------
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device(device, option: str = "--device") -> None:
    """Refuse a device name torch would not take (before any work; whether CUDA is there is asked later)."""
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise BadSetting(f"{option} {device!r}: use auto, cpu, cuda or cuda:N", option)


__all__ = ["BATCH_SIZE", "EMBED_BATCH", "EMBED_BOUNDS", "ENSEMBLE_BOUNDS", "EVAL_BOUNDS", "IMAGE_SIZE", "K",
           "LOADER_WORKERS", "MIN_POSITIVES", "MODEL_BOUNDS", "POS_WEIGHT", "PREDICT_BOUNDS", "SCORING_BOUNDS", "SEED",
           "TOP", "TRAIN_BOUNDS", "check_device"]
