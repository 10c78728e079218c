"""After training: ``evaluate``, ``predict``, ``ensemble``, ``compare`` and ``report``.

Each parses, calls one library function (``wdr_pipe.wdr.score.evaluate`` /
``predict`` / ``ensemble`` / ``compare``, ``wdr_pipe.report``) and prints
its result.
"""
from __future__ import annotations

import json

import click

from ..wdr.checks import BATCH_SIZE, ENSEMBLE_BOUNDS, EVAL_BOUNDS, SEED, TOP
from . import cli
from .common import (CONTEXT, bounded, device_option, echo_result, given_options, json_option, not_empty, progress_bar,
                     store_option, user_errors)
from .model import loader_workers_option

RUN_OPTION = click.option("--run", "run", required=True, type=click.Path(), callback=not_empty,
                          help="Run folder of 'wdr-pipe train' or 'wdr-pipe ensemble'.")


def _scoring_options(f):
    f = loader_workers_option()(f)
    f = click.option("--batch-size", type=bounded(BATCH_SIZE), default=64, show_default=True,
                     help="Images per batch.")(f)
    f = device_option()(f)
    f = click.option("--tta", type=click.Choice(["none", "flip"]), default=None,
                     help="Test-time augmentation: flip averages each image and its mirror [default: none].")(f)
    f = click.option("--checkpoint", type=click.Choice(["best", "last"]), default=None,
                     help="Which checkpoint of a training run [default: best].")(f)
    return f


@cli.command(context_settings=CONTEXT)
@store_option(exists=False, help="The store holding the split.")
@RUN_OPTION
@click.option("--split", default="validation", show_default=True, help="A labelled split of the store.")
@_scoring_options
@click.option("--saliency", type=bounded(EVAL_BOUNDS["saliency"]), default=6, show_default=True,
              help="Images in the report's Grad-CAM grid (0: none).")
@click.option("--no-report", is_flag=True, help="Do not build RUN/eval/SPLIT/report.html.")
@json_option
def evaluate(store, run, split, checkpoint, tta, device, batch_size, loader_workers, saliency, no_report, as_json):
    """Score a labelled split with a run: metrics at 0.5 and at the tuned thresholds, per label, and the report.

    Writes RUN/eval/SPLIT/: metrics.json (micro_f1 ...), per_label.csv, predictions.parquet,
    saliency.safetensors, report.html and last result.json.

    \b
    Examples:
      wdr-pipe evaluate --store store/ --run runs/wdr
      wdr-pipe evaluate --store store/ --run runs/wdr --split validation --tta flip --checkpoint last
    """
    from ..wdr.score.evaluate import EvalConfig, evaluate as run_evaluate

    with user_errors():
        cfg = EvalConfig(store=store, run=run, **given_options(["split", "checkpoint", "tta", "device", "batch_size",
                                                                 "loader_workers", "saliency"]))
        made = []

        def make_report():  # before result.json, the evaluation's commit marker
            from ..report import build_report

            made.append(build_report(run, split, store))

        with progress_bar("evaluate") as bar:
            result = run_evaluate(cfg, progress=bar, before_commit=None if no_report else make_report)
        report = made[0] if made else None
    if as_json:
        click.echo(json.dumps({"evaluate": result.to_dict(), "report": report.to_dict() if report else None},
                              indent=2, default=str))
        return
    click.echo("\n".join(result.summary))
    if report is not None:
        click.echo(f"report: {report.output}")


@cli.command(context_settings=CONTEXT)
@click.argument("images", nargs=-1, metavar="[IMAGE_OR_URL]...")
@RUN_OPTION
@store_option(required=False, exists=False, help="With --split: the store to predict. With images: whose fetch "
                                                 "settings to follow [default: the run's training store].")
@click.option("--split", default=None, help="Predict every row of this split's index [default with --out: test].")
@click.option("--out", type=click.Path(dir_okay=False), default=None, callback=not_empty,
              help="The submission CSV to write.")
@click.option("--probs", type=click.Path(dir_okay=False), default=None, callback=not_empty,
              help="Also write the probabilities (Parquet).")
@_scoring_options
@click.option("--top", type=bounded(TOP), default=5, show_default=True,
              help="With images and --json: the top labels listed per image.")
@json_option
def predict(images, run, store, split, out, probs, checkpoint, tta, device, batch_size, loader_workers, top,
            as_json):
    """Predict a store split into a Kaggle submission, or tag new photos (files or URLs).

    The submission has a row for every image of the split's index, failed downloads included
    (they get the fallback: the training labels most worth giving to every image).

    \b
    Examples:
      wdr-pipe predict --store store/ --run runs/wdr --split test --out submission.csv
      wdr-pipe predict --store store/ --run runs/wdr --split test --out sub.csv --probs test_probs.parquet
      wdr-pipe predict --run runs/wdr photo.jpg https://shop.example/new-dress.jpg
      wdr-pipe predict --run runs/wdr photo.jpg --json
    """
    from ..wdr.score import predict as P

    with user_errors():
        if images:
            if out is not None or probs is not None or split is not None:
                raise click.UsageError("pass either IMAGE_OR_URL... or --split/--out, not both")
            tagged = P.tag_images(run, images, store=store, checkpoint=checkpoint, tta=tta, device=device, top=top)
            click.echo(json.dumps(tagged, indent=2) if as_json else "\n".join(P.tag_lines(tagged)))
            return
        if store is None or out is None:
            raise click.UsageError("pass --store and --out (with --split, default test), or IMAGE_OR_URL...")
        cfg = P.PredictConfig(store=store, run=run, out=out, split="test" if split is None else split, probs=probs,
                              checkpoint=checkpoint, tta=tta, device=device, batch_size=batch_size,
                              loader_workers=loader_workers)
        with progress_bar("predict") as bar:
            result = P.predict_split(cfg, progress=bar)
    echo_result(result, as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=not_empty,
              help="The ensemble's run folder (new).")
@click.option("--method", type=click.Choice(["mean", "stack"]), default="mean", show_default=True,
              help="mean: average the probabilities; stack: per-label logistic regression, k-fold on the split.")
@store_option(required=False, exists=False, help="[default: the first run's training store]")
@click.option("--split", default="validation", show_default=True, help="The split to tune (and stack) on.")
@click.option("--folds", type=bounded(ENSEMBLE_BOUNDS["folds"]), default=5, show_default=True, help="Folds of the stack.")
@click.option("--seed", type=bounded(SEED), default=0, show_default=True, help="Seed of the folds.")
@_scoring_options
@json_option
def ensemble(runs, out, method, store, split, folds, seed, checkpoint, tta, device, batch_size, loader_workers,
             as_json):
    """Combine trained runs into one run folder that evaluate and predict accept.

    \b
    Examples:
      wdr-pipe ensemble runs/a runs/b runs/c --out runs/ens
      wdr-pipe ensemble runs/a runs/b --out runs/stack --method stack --folds 5
    """
    from ..wdr.score.ensemble import EnsembleConfig, make_ensemble

    with user_errors():
        cfg = EnsembleConfig(runs=runs, out=out, **given_options([
            "method", "store", "split", "folds", "seed", "checkpoint", "tta", "device", "batch_size", "loader_workers"]))
        with progress_bar("ensemble") as bar:
            result = make_ensemble(cfg, progress=bar)
    echo_result(result, as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--split", default="validation", show_default=True, help="Whose evaluation figures to show.")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv"]), default="markdown", show_default=True)
def compare(runs, split, fmt):
    """One table of runs: the settings that differ, micro-F1 at 0.5 and tuned, macro-F1, images/s, time.

    \b
    Examples:
      wdr-pipe compare runs/deep runs/wdr runs/ens
      wdr-pipe compare runs/* --format csv > runs.csv
    """
    from ..wdr.score.compare import compare_runs, format_table

    with user_errors():
        header, rows = compare_runs(runs, split)
    click.echo(format_table(header, rows, fmt), nl=False)


@cli.command(context_settings=CONTEXT)
@RUN_OPTION
@click.option("--split", default="validation", show_default=True, help="The evaluated split.")
@store_option(required=False, exists=False, help="[default: the store the evaluation used]")
@json_option
def report(run, split, store, as_json):
    """Build RUN/eval/SPLIT/report.html again from what evaluate, train and the store wrote.

    \b
    Example:
      wdr-pipe report --run runs/wdr --split validation
    """
    from ..report import build_report

    with user_errors():
        result = build_report(run, split, store)
    echo_result(result, as_json)
