"""Data commands: ``fetch``, ``features``, ``stats`` and ``store info``."""
from __future__ import annotations

import click

from ..pipeline.checks import (DOWNLOAD_BOUNDS as _DL, FEATURE_BOUNDS as _FEAT, FETCH_BOUNDS as _IMG,
                               OPTION_BOUNDS as _OPT, RESIZE_MODES, STATS_BOUNDS as _STATS)
from . import cli
from .common import (CONTEXT, EXIT_MAX_FAILED, Failure, FiniteFloatRange, bounded, echo_result, json_option,
                     not_empty, progress_bar, scheduler_option, store_option, user_errors, workers_option)


def _holdout(value):
    """``NAME=FRACTION`` -> (NAME, FRACTION) with 0 < FRACTION < 1."""
    if value is None:
        return None
    name, _, fraction = value.partition("=")
    try:
        f = float(fraction)
    except ValueError:
        f = -1.0
    if not name or not 0 < f < 1:
        raise click.BadParameter(f"{value!r}: give NAME=FRACTION with 0 < FRACTION < 1, e.g. validation=0.33")
    return name, f


# -- fetch ---------------------------------------------------------------------
# The ranges are the library configs' own (pipeline/checks.py): the command line refuses
# exactly the values the configs refuse, when it parses them.


@cli.command()
@click.argument("indexes", nargs=-1, required=True, type=click.Path(exists=True))
@store_option(create=True)
@click.option("--split", help="Split name (default: the index file's stem, e.g. train).")
@click.option("--label-map", type=click.Path(exists=True, dir_okay=False), help="CSV labelId,taskId,labelName,taskName.")
@click.option("--size", type=bounded(_IMG["size"]), default=320, show_default=True,
              help="Output size in pixels (see --resize-mode).")
@click.option("--resize-mode", type=click.Choice(RESIZE_MODES), default="shorter",
              show_default=True, help="shorter/longer: that side becomes --size; center_crop/pad: a --size square.")
@click.option("--quality", type=bounded(_IMG["quality"]), default=95, show_default=True,
              help="JPEG quality of the stored images.")
@click.option("--min-size", type=bounded(_IMG["min_size"]), default=32, show_default=True,
              help="Reject images whose shorter side is smaller.")
@click.option("--shard-size", type=bounded(_OPT["shard_size"]), default=1000, show_default=True,
              help="Rows per shard (one dask task each).")
@workers_option
@click.option("--threads", type=bounded(_OPT["threads"]), default=16, show_default=True,
              help="Download threads per worker.")
@click.option("--per-host", type=bounded(_OPT["per_host"]), default=8, show_default=True,
              help="At most this many downloads at once per host in each worker (raise it to --threads for a one-host index).")
@scheduler_option
@click.option("--timeout", type=bounded(_DL["read_timeout"]), default=10.0, show_default=True,
              help="Connect/read timeout per request, seconds.")
@click.option("--deadline", type=bounded(_DL["deadline"]), default=60.0, show_default=True,
              help="Overall time limit per image, retries included, seconds.")
@click.option("--retries", type=bounded(_DL["retries"]), default=3, show_default=True,
              help="Retries on connection errors, 5xx and 429.")
@click.option("--max-bytes", type=bounded(_DL["max_bytes"]), default=20 * 2**20, show_default=True,
              help="Largest body accepted per image.")
@click.option("--limit", type=click.IntRange(min=1), help="Fetch only the first N rows of each split.")
@click.option("--retry-failed", is_flag=True, help="Also fetch again the failed rows of finished shards.")
@click.option("--holdout", callback=lambda ctx, param, value: _holdout(value), metavar="NAME=FRACTION",
              help="Cut split NAME from the one labelled input split: that fraction of its rows, chosen by a "
                   "hash of the image id (e.g. validation=0.33 for the Clothing Attributes folder).")
@click.option("--max-failed", type=FiniteFloatRange(0, 1), default=None, metavar="FRACTION",
              help="Exit with code 3 when more than this fraction of the fetched rows failed (e.g. 0.05) "
                   "[default: never; failures are reported and the exit code is 0].")
@json_option
def fetch(indexes, store, split, label_map, size, resize_mode, quality, min_size, shard_size, workers, threads,
          per_host, scheduler, timeout, deadline, retries, max_bytes, limit, retry_failed, holdout, max_failed,
          as_json):
    """Download and resize the images of URL INDEXES into Parquet shards under STORE/images/.

    INDEXES are FGVC5 JSON files (train.json ...), CSV/TSV/Parquet files with image_id and url
    columns (.json.gz, .csv.gz and .tsv.gz are read too), or a Clothing Attributes folder.
    A rerun resumes: finished shards are skipped. Failed images are recorded with their
    reason and counted in the summary; the exit code is 0 unless --max-failed is exceeded (3).

    \b
    Examples:
      wdr-pipe fetch train.json validation.json --store store/
      wdr-pipe fetch urls.csv --store store/ --size 299 --limit 1000
      wdr-pipe fetch train.json --store store/ --retry-failed --scheduler tcp://10.0.0.5:8786
      wdr-pipe fetch ClothingAttributeDataset/ --split train --holdout validation=0.33 --store clothing/
      wdr-pipe fetch train.json.gz --store store/ --max-failed 0.05
    """
    from ..pipeline.download import DownloadConfig
    from ..pipeline.fetch import FetchConfig, FetchOptions, fetch as run_fetch

    with user_errors():
        cfg = FetchConfig(size=size, resize_mode=resize_mode, quality=quality, min_size=min_size)
        dl = DownloadConfig(connect_timeout=timeout, read_timeout=timeout, deadline=deadline, retries=retries,
                            max_bytes=max_bytes)
        opts = FetchOptions(shard_size=shard_size, threads=threads, per_host=per_host, download=dl)
        with progress_bar("fetch") as bar:
            result = run_fetch(store, indexes, cfg, opts, split=split, label_map=label_map, limit=limit,
                               retry_failed=retry_failed, workers=workers, scheduler=scheduler, progress=bar,
                               holdout=holdout)
    if not as_json:
        for name, s in result.splits.items():
            reasons = ", ".join(f"{k} {v}" for k, v in s["by_status"].items()) or "none"
            click.echo(f"{name}: {s['ok']} ok, {s['failed']} failed ({reasons}); {s['shards_run']} of {s['shards']} "
                       f"shards run now, {s['bytes_downloaded'] / 2**20:.1f} MiB downloaded"
                       + (f", {s['duplicates']} duplicate images (see images/{name}/_duplicates.parquet)"
                          if s["duplicates"] else ""))
    echo_result(result, as_json)
    attempted = result.ok + result.failed
    if max_failed is not None and attempted and result.failed / attempted > max_failed:
        raise Failure(f"{result.failed} of {attempted} images failed ({result.failed / attempted:.1%}), more than "
                      f"--max-failed {max_failed:g} allows; see the failure reasons above "
                      "('wdr-pipe store info' lists them by split)", EXIT_MAX_FAILED)


# -- features ------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@store_option()
@click.option("--split", "splits", multiple=True, help="Split to process (repeatable; default: every split with images).")
@click.option("--hog-size", type=bounded(_FEAT["hog_size"]), default=128, show_default=True,
              help="Images are resized to SIZE x SIZE.")
@click.option("--orientations", type=bounded(_FEAT["orientations"]), default=9, show_default=True,
              help="HOG orientation bins.")
@click.option("--bins", type=bounded(_FEAT["bins"]), default=8, show_default=True,
              help="Colour histogram bins per HSV channel.")
@click.option("--keep-background", is_flag=True, help="Count near-white background pixels in the histogram.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--rebuild", is_flag=True, help="Recompute every shard of these splits under this config.")
@workers_option
@scheduler_option
@json_option
def features(store, splits, hog_size, orientations, bins, keep_background, dtype, rebuild, workers, scheduler, as_json):
    """Compute HOG and colour-histogram features of every fetched image.

    Writes STORE/features/KEY/SPLIT/part-NNNNN.parquet, one per image shard,
    where KEY is a hash of the settings; shards already computed with the same
    settings are reused, so a rerun only does new image shards.

    \b
    Example:
      wdr-pipe features --store store/ --split train --split validation
    """
    from ..pipeline.features import FeatureConfig, compute_features

    with user_errors():
        cfg = FeatureConfig(hog_size=hog_size, orientations=orientations, bins=bins,
                            ignore_background=not keep_background, dtype=dtype)
        with progress_bar("features") as bar:
            result = compute_features(store, splits or None, cfg, rebuild=rebuild, workers=workers,
                                      scheduler=scheduler, progress=bar)
    echo_result(result, as_json)


# -- store ---------------------------------------------------------------------


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


@cli.group("store")
def store_group() -> None:
    """Inspect a store (see docs/store.md for its layout)."""


@store_group.command("info")
@click.argument("store", type=click.Path(exists=True, file_okay=False), callback=not_empty)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def store_info_cmd(store, as_json):
    """Print the splits, row counts, failures, feature configs, label stats and sizes of STORE.

    \b
    Examples:
      wdr-pipe store info store/
      wdr-pipe store info store/ --json | jq .splits.train
    """
    import json

    from ..cache import store_info

    with user_errors():
        info = store_info(store)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"store {info['path']}: schema version {info['schema_version']}, {_size(info['bytes'])}, "
               f"{info['labels']} labels ({'label_map.parquet' if info['label_map'] else 'no label map'})")
    click.echo(f"{'split':<12}{'index':>9}{'fetched':>9}{'failed':>8}{'not yet':>9}{'shards':>11}{'size':>11}  images")
    for name, s in info["splits"].items():
        index = "-" if s["index_rows"] is None else s["index_rows"]
        todo = "-" if s["not_attempted"] is None else s["not_attempted"]
        click.echo(f"{name:<12}{index:>9}{s['ok']:>9}{s['failed']:>8}{todo:>9}"
                   f"{s['committed_shards']:>6}/{s['shards']:<4}{_size(s['bytes']):>11}  {s['image']}")
        if s["failed_by_status"]:
            click.echo("    failed: " + ", ".join(f"{k} {v}" for k, v in s["failed_by_status"].items()))
    if any(s["not_attempted"] for s in info["splits"].values()):
        click.echo("    not yet: index rows no fetch has tried (--limit, or an interrupted run); fetch again to do them")
    click.echo("features:" + ("" if info["features"] else " none (run 'wdr-pipe features')"))
    for f in info["features"]:
        shards = ", ".join(f"{k} {v}" for k, v in f["shards"].items()) or "no shards"
        click.echo(_wrap(f"{f['key']}  {f['summary']}"))
        click.echo(f"      shards: {shards}; {_size(f['bytes'])}")
    click.echo("embeddings:" + ("" if info["embeddings"] else " none (run 'wdr-pipe embed')"))
    for f in info["embeddings"]:
        shards = ", ".join(f"{k} {v}" for k, v in f["shards"].items()) or "no shards"
        click.echo(_wrap(f"{f['key']}  {f['summary']}"))
        click.echo(f"      shards: {shards}; {_size(f['bytes'])}")
    click.echo("label stats:" + ("" if info["stats"] else " none (run 'wdr-pipe stats')"))
    for name, s in info["stats"].items():
        state = "complete" if s["complete"] else "INCOMPLETE (rerun 'wdr-pipe stats')"
        click.echo(_wrap(f"{name}: {state}, key {s['key']}, {_size(s['bytes'])}  {s['summary']}"))


def _wrap(text: str, width: int = 100) -> str:
    """Indented and wrapped at ``width`` (configs are long; nothing is cut)."""
    import textwrap

    return textwrap.fill(text, width=width, initial_indent="  ", subsequent_indent="      ",
                         break_long_words=False, break_on_hyphens=False)


@cli.command("stats")
@store_option()
@click.option("--split", "splits", multiple=True, help="Split(s) to do [default: every labelled split].")
@click.option("--dim", type=bounded(_STATS["dim"]), default=20, show_default=True, help="Label embedding dimension.")
@click.option("--alpha", type=bounded(_STATS["alpha"]), default=0.75, show_default=True,
              help="Exponent of the label weights.")
@click.option("--epochs", type=bounded(_STATS["epochs"]), default=1000, show_default=True,
              help="Epochs of the embedding fit.")
@click.option("--seed", type=bounded(_STATS["seed"]), default=0, show_default=True, help="Seed of the embedding fit.")
@click.option("--pos-weight-clip", type=bounded(_STATS["pos_weight_clip"]), default=100.0, show_default=True,
              help="Clip BCE pos_weight to [1/c, c].")
@json_option
def stats_cmd(store, splits, dim, alpha, epochs, seed, pos_weight_clip, as_json):
    """Label counts, co-occurrence, label embeddings and loss weights of each labelled split.

    Writes STORE/stats/<split>/ (see docs/store.md); a rerun with the same settings and images does nothing.

    \b
    Examples:
      wdr-pipe stats --store store/
      wdr-pipe stats --store store/ --split train --dim 32 --alpha 0.5
    """
    from ..pipeline.label_stats import StatsConfig, compute_stats

    with user_errors(), progress_bar("stats", unit="split") as bar:
        cfg = StatsConfig(dim=dim, alpha=alpha, epochs=epochs, seed=seed, pos_weight_clip=pos_weight_clip)
        result = compute_stats(store, splits or None, cfg, progress=bar)
    if not as_json:
        for name, s in result.splits.items():
            if s["status"] == "computed":
                click.echo(f"{name}: {s['images']} images, {s['labels']} labels, embedding loss "
                           f"{s['loss_start']:.3f} -> {s['loss_end']:.4f}; written to {s['dir']}")
            elif s["status"] == "cached":
                click.echo(f"{name}: up to date ({s['dir']})")
            else:
                click.echo(f"{name}: skipped ({s['reason']})")
    echo_result(result, as_json)
