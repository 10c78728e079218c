"""Data commands: ``fetch``, ``features``, ``stats`` and ``store info``.

Their options are the fields of the commands' settings (``pipeline/settings.py``) and of
``runner.Cluster``; each command makes its settings, runs them and prints the result's lines.
"""
from __future__ import annotations

import click

from ..pipeline.runner import Cluster
from ..pipeline.settings import FeatureSettings, FetchSettings, StatsSettings
from . import cli
from .common import (CONTEXT, echo_result, json_option, not_empty, progress_bar, settings_errors, store_option,
                     user_errors)
from .options import from_options, options


@cli.command()
@options(FetchSettings)
@store_option(create=True)
@options(Cluster)
@json_option
def fetch(store, as_json, **given):
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
    with user_errors():
        with settings_errors():
            settings, cluster = from_options(FetchSettings, given), from_options(Cluster, given)
        with progress_bar("fetch") as bar:
            result = settings.run(store, cluster, progress=bar)
    echo_result(result, as_json)
    with user_errors():
        settings.verdict(result)


@cli.command(context_settings=CONTEXT)
@store_option()
@options(FeatureSettings)
@click.option("--rebuild", is_flag=True, help="Recompute every shard of these splits under this config.")
@options(Cluster)
@json_option
def features(store, rebuild, as_json, **given):
    """Compute HOG and colour-histogram features of every fetched image.

    Writes STORE/features/KEY/SPLIT/part-NNNNN.parquet, one per image shard,
    where KEY is a hash of the settings; shards already computed with the same
    settings are reused, so a rerun only does new image shards.

    \b
    Example:
      wdr-pipe features --store store/ --split train --split validation
    """
    with user_errors():
        with settings_errors():
            settings, cluster = from_options(FeatureSettings, given), from_options(Cluster, given)
        with progress_bar("features") as bar:
            result = settings.run(store, cluster, progress=bar, rebuild=rebuild)
    echo_result(result, as_json)


@cli.command("stats")
@store_option()
@options(StatsSettings)
@json_option
def stats_cmd(store, as_json, **given):
    """Label counts, co-occurrence, label embeddings and loss weights of each labelled split.

    Writes STORE/stats/<split>/ (see docs/store.md); a rerun with the same settings and images does nothing.

    \b
    Examples:
      wdr-pipe stats --store store/
      wdr-pipe stats --store store/ --split train --dim 32 --alpha 0.5
    """
    with user_errors():
        with settings_errors():
            settings = from_options(StatsSettings, given)
        with progress_bar("stats", unit="split") as bar:
            result = settings.run(store, progress=bar)
    echo_result(result, as_json)


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

    from ..cache import info_lines, store_info

    with user_errors():
        info = store_info(store)
    click.echo(json.dumps(info, indent=2) if as_json else "\n".join(info_lines(info)))
