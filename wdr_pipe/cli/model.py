"""Model commands: ``train`` (and ``train --resume``), ``thresholds`` (re-tune a finished run's).

The flags of ``train`` are the fields of ``wdr_pipe.wdr.train.config.TrainConfig``
(dashes for underscores); ``TrainConfig`` checks them all and names the flag
to fix, so this module only parses and delegates. ``loader_workers_option``:
``--loader-workers`` of every model command, with ``--workers``, its earlier
name, still taken (hidden: ``--workers`` is the data commands' dask processes).
"""
from __future__ import annotations

import dataclasses
import functools

import click

from ..wdr.checks import LOADER_WORKERS, MIN_POSITIVES
from . import cli
from .common import (CONTEXT, FiniteFloatRange, bounded, device_option, echo_result, given_options, json_option,
                     not_empty, progress_bar, store_option, user_errors)


def loader_workers_option(default=2, help="Loader worker processes."):
    """``--loader-workers N`` (the parameter ``loader_workers``), and the hidden ``--workers N`` it was called
    before, which wins when given."""
    def decorate(f):
        @functools.wraps(f)
        def command(*args, workers=None, **kwargs):
            if workers is not None:
                kwargs["loader_workers"] = workers
            return f(*args, **kwargs)

        command = click.option("--workers", "workers", type=bounded(LOADER_WORKERS), default=None, hidden=True,
                               help="The earlier name of --loader-workers.")(command)
        return click.option("--loader-workers", "loader_workers", type=bounded(LOADER_WORKERS), default=default,
                            show_default=default is not None, help=help)(command)
    return decorate


# help text of every train flag, in the order --help shows them
RECIPE = " [default: the recipe's]"
HELP = {
    "train_split": "Split to train on.",
    "val_split": "Split to validate on (thresholds are tuned on it).",
    "recipe": "lp-ft: the heads on the cached embeddings, then the whole network fine-tuned; fixed: the heads "
              "alone; single: one phase as the flags say [default: lp-ft; single where --deep, --epochs, --lr, "
              "--optimizer, --weight-decay, --sched, --warmup-epochs, --init, --freeze-first or --stream-images is "
              "given, or the backbone has no weights].",
    "backbone": "Any timm model name (Deep part), e.g. tf_efficientnet_lite0, legacy_xception, vgg16.",
    "pretrained": "ImageNet weights: tf_efficientnet_lite0 offline from its package; others from timm's source "
                  "[default: on where they ship offline].",
    "weights": "A local .pth/.safetensors file of the backbone's weights (loaded through timm).",
    "deep": "fixed: backbone frozen; half: its first half frozen; tune: all trained (the WDR table's rows; lp-ft: "
            "phase 2's) [default: tune].",
    "freeze_first": "Freeze the first N weight layers (the VGG-16 paper's first 12 layers fixed).",
    "head": "linear, or mlp: two layers stacked on top (the VGG-16 paper).",
    "head_hidden": "Hidden units of the mlp head.",
    "head_dropout": "Dropout of the mlp head.",
    "drop_rate": "Dropout on the pooled deep features.",
    "parts": "Comma-separated subset of deep,wide,recurrent (always with deep).",
    "wide_hidden": "Units of the Wide part's hidden layer over HOG + colour histogram.",
    "rnn_hidden": "Units of the Recurrent part's bi-GRU, each way.",
    "label_embeddings": "Recurrent inputs: frozen or trainable (pre-trained, from stats/) or random.",
    "feature_key": "Feature config of the Wide part [default: the store's only one].",
    "image_size": "Training image size [default: the backbone's].",
    "stream_images": "With --deep fixed: decode and augment images every batch instead of training from the "
                     "cached embeddings (wdr-pipe embed; computed first when missing).",
    "labels": "all, or top:N to train on the N most frequent training labels.",
    "epochs": "Epochs of the recipe's last phase [default: single 10; lp-ft and fixed: scaled to the data].",
    "batch_size": "Most images per step (per process); an epoch is cut into equal batches [default: single 64, "
                  "lp-ft and fixed 32].",
    "lr": "Learning rate of the recipe's last phase, or auto (the range test of lr-find) [default: single 3e-4, "
          "lp-ft 1e-3, fixed 3e-2, or 3e-3 with wide or recurrent in --parts].",
    "head_lr": "lp-ft: learning rate of phase 1, the heads on the cached embeddings, or auto [default: 3e-2; 3e-3 "
               "with wide or recurrent in --parts].",
    "optimizer": "Any timm optimizer (nadam as in the paper, adamw, sgd...) [default: single nadam, else adamw].",
    "weight_decay": "Weight decay [default: lp-ft 0.01, else 0].",
    "sched": "Learning-rate schedule (timm), stepped per update [default: cosine].",
    "warmup_epochs": "Warm-up epochs [default: lp-ft 1, else 0].",
    "layer_decay": "Layer-wise rate decay of the backbone (timm): each layer group trains at this times the rate "
                   "of the one above [default: lp-ft 0.75, else none].",
    "bn": "train: BatchNorm statistics of the batches; frozen: the backbone's own, kept [default: lp-ft frozen, "
          "else train].",
    "patience": "Validations without a gain in micro-F1 before a phase stops; 0: never [default: single 0; "
                "heads 5, fine-tune 2].",
    "grad_accum": "Steps of gradient accumulation per update.",
    "clip_grad": "Clip the gradient norm to this.", "ema": "Keep an EMA of the weights (timm ModelEmaV3).",
    "ema_decay": "EMA decay.", "loss": "bce, or asl (asymmetric loss, timm).",
    "weighting": "The poster's alpha weighting: loss (loss weights), sample (weighted sampling) or none.",
    "pos_weight": "Weight on positive labels: a number K (the VGG-16 paper) or 'stats' (per label).",
    "init": "Start from another run's weights (train Wide + Recurrent with deep fixed, then fine-tune).",
    "seed": "Seed of the order, the augmentation and the initialisation.",
    "loader_workers": "Loader worker processes.", "device": "auto, cpu, cuda or cuda:N.",
    "amp": "auto (bf16 and channels_last on CUDA), bf16 or off.", "compile": "torch.compile the model.",
    "checkpoint_every": "Checkpoint every N steps (also at each epoch's end).",
    "eval_every": "Validate every N steps (0: at each epoch's end only) [default: single 0; lp-ft and fixed: about "
                  "20 times in the heads phase, 5 in the fine-tune].",
    "thresholds": "auto: per class, per class for labels with more positives, or one global threshold, whichever "
                  "holds best out of fold on the validation split; tune: per class; cv: tune, and report its "
                  "out-of-fold gain; none: 0.5.",
    "min_positives": "Labels with fewer validation positives get the global threshold.",
}


class Rate(FiniteFloatRange):
    """A learning rate in its range, or ``auto`` (the learning-rate finder)."""

    name = "rate"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super().convert(value, param, ctx)


def _train_options(f):
    from ..wdr.checks import MODEL_BOUNDS, TRAIN_BOUNDS
    from ..wdr.train.config import TrainConfig

    bounds = {**MODEL_BOUNDS, **TRAIN_BOUNDS}  # a numeric flag's range is its config field's
    defaults = {fld.name: fld.default for fld in dataclasses.fields(TrainConfig)}
    for name in reversed(list(HELP)):
        default = defaults[name]
        opt = "--" + name.replace("_", "-")
        if name == "loader_workers":
            f = loader_workers_option(default, HELP[name])(f)
        elif name == "pretrained":
            f = click.option("--pretrained/--no-pretrained", name, default=None, help=HELP[name])(f)
        elif name in ("lr", "head_lr"):
            b = bounds[name]
            f = click.option(opt, name, default=None, type=Rate(b.lo, b.hi, min_open=b.lo_open, max_open=b.hi_open),
                             metavar="RATE|auto", help=HELP[name])(f)
        elif isinstance(default, bool):
            f = click.option(opt, name, is_flag=True, help=HELP[name])(f)
        else:
            shown = ",".join(default) if isinstance(default, tuple) else default
            f = click.option(opt, name, default=shown, show_default=default is not None,
                             type=bounded(bounds[name]) if name in bounds else str, help=HELP[name])(f)
    return f


@cli.command(context_settings=CONTEXT)
@store_option(required=False, help="The store to train from.")
@click.option("--out", type=click.Path(file_okay=False), callback=not_empty,
              help="The run folder (config, checkpoints, metrics).")
@click.option("--resume", "resume_run", type=click.Path(exists=True, file_okay=False), callback=not_empty,
              help="Continue the run in this folder with its own settings; with --lr X, at that rate from its "
                   "last checkpoint (recorded in its config.json). Other options are refused.")
@_train_options
@json_option
def train(store, out, resume_run, as_json, **settings):
    """Train the Wide, Deep and Recurrent tagger on a store into the run folder OUT.

    Rerun the same command and a finished run is reused, an unfinished one continues from
    its last checkpoint (to the sample); other settings in the same OUT are refused.
    Under torchrun every process trains one share of each batch (DDP). With --deep fixed the
    backbone's vectors come from the store's cached embeddings (computed first when missing,
    as 'wdr-pipe embed' would), so no image is decoded; --stream-images decodes and augments instead.

    \b
    Examples:
      wdr-pipe train --store store/ --out runs/deep --backbone tf_efficientnet_lite0 --pretrained
      wdr-pipe train --store store/ --out runs/wdr --pretrained --deep fixed --parts deep,wide,recurrent
      wdr-pipe train --resume runs/wdr
      wdr-pipe train --resume runs/wdr --lr 3e-5     (after a divergence: the same run at a lower rate)
      torchrun --nproc_per_node 2 -m wdr_pipe.cli train --store store/ --out runs/ddp --pretrained
    """
    from ..wdr.train.config import TrainConfig
    from ..wdr.train.loop import resume, train as run_train

    with user_errors(), progress_bar("train", unit="step") as bar:
        if resume_run:  # the run's own settings; other options refused, but --lr (recorded as a change)
            result = resume(resume_run, progress=bar, given=given_options([*settings, "store", "out"]))
        else:
            if store is None or out is None:
                raise click.UsageError("pass --store and --out (or --resume RUN)")
            result = run_train(TrainConfig(store=store, out=out, **settings), progress=bar)
    echo_result(result, as_json)


@cli.command(context_settings=CONTEXT)
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A finished run folder (the --out of 'wdr-pipe train').")
@click.option("--thresholds", "mode", type=click.Choice(["auto", "tune", "cv"]), default=None,
              help="auto: per class, per class for labels with more positives, or one global threshold, whichever "
                   "holds best out of fold; tune: per class; cv: also report their out-of-fold gain (5 folds) "
                   "[default: the run's own].")
@click.option("--min-positives", type=bounded(MIN_POSITIVES), default=None,
              help="Labels with fewer validation positives get the one global threshold [default: the run's own].")
@device_option(None, "auto, cpu, cuda or cuda:N [default: the run's].")
@loader_workers_option(None, "Loader worker processes [default: the run's].")
@json_option
def thresholds(run_dir, mode, min_positives, device, loader_workers, as_json):
    """Tune a finished run's per-class thresholds again on its validation split.

    The run's best checkpoint predicts the validation split once; thresholds are tuned on
    those scores (Fan and Lin's cyclic optimisation for micro-F1) and replace RUN/thresholds.json
    and the threshold figures in RUN/result.json. Weights and settings are left alone.

    \b
    Examples:
      wdr-pipe thresholds --run runs/wdr
      wdr-pipe thresholds --run runs/wdr --thresholds cv --min-positives 10
    """
    from ..wdr.train.retune import retune_thresholds

    with user_errors(), progress_bar("thresholds", unit="batch") as bar:
        result = retune_thresholds(run_dir, mode=mode, min_positives=min_positives, device=device,
                                   loader_workers=loader_workers, progress=bar)
    echo_result(result, as_json)


@cli.command("lr-find", context_settings=CONTEXT)
@store_option(help="The store to test on.")
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=not_empty,
              help="The folder lr_find.json and lr_find.png go to.")
@click.option("--phase", default=None,
              help="The recipe's phase to test: heads (from the cached embeddings) or fine-tune (images) "
                   "[default: its first].")
@_train_options
@json_option
def lr_find(store, out, phase, as_json, **settings):
    """The learning-rate range test of a training phase: the rate it suggests, and its curve.

    As fastai's lr_find: the phase's own optimizer at a rate growing exponentially from 1e-7 to
    10 over 100 steps, the loss smoothed; the suggestion is where it falls fastest. Deterministic;
    the heads phase trains from the cached embeddings (computed first where missing) in seconds.
    Takes train's flags, so it tests the phase that 'train' with them would run.

    \b
    Examples:
      wdr-pipe lr-find --store store/ --out lrf/
      wdr-pipe lr-find --store store/ --out lrf/ --recipe fixed --parts deep,wide
    """
    from ..wdr.train.config import TrainConfig
    from ..wdr.train.lr_find import lr_find as find

    with user_errors(), progress_bar("lr-find", unit="step") as bar:
        result = find(TrainConfig(store=store, out=out, **settings), phase, progress=bar)
    echo_result(result, as_json)
