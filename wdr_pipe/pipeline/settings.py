"""Each data command's settings: ``wdr-pipe fetch``, ``features`` and ``stats``, and a ``run`` file's
``[fetch]``, ``[features]`` and ``[stats]`` tables.

A settings class lists what its command takes: fields copied from the stage's configs
(``checks.from_config``: default, range and choices said once, in ``configs.py``) with the help
line the command shows, and the command's own settings. The CLI's options (``cli/options.py``)
and the ``run`` file's keys (``workflow/schema.py``) are generated from these fields; ``run``
builds the configs and calls the stage, one way for both. Where the stages run (``--workers``,
``--scheduler``) is ``runner.Cluster``, shared by fetch and features.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from ..checks import Bound, build, check_settings, from_config, setting
from ..errors import BadSetting, TooManyFailed
from ..progress import Hook
from ..result import StageResult
from .configs import LIMIT, DownloadConfig, FeatureConfig, FetchConfig, FetchOptions, StatsConfig
from .runner import Cluster

SPLITS_HELP = "Split to process (repeatable) [default: every split with images]."


def parse_holdout(value: Optional[str]) -> Optional[Tuple[str, float]]:
    """``"NAME=FRACTION"`` -> ``(NAME, FRACTION)`` when 0 < FRACTION < 1; ``None`` otherwise."""
    name, _, fraction = str(value).partition("=")
    try:
        return (name, float(fraction)) if name and 0 < float(fraction) < 1 else None
    except ValueError:
        return None


def holdout_problem(value: Optional[str]) -> Optional[str]:
    """Why ``value`` is not ``NAME=FRACTION`` with 0 < FRACTION < 1; ``None`` when it is (or is ``None``)."""
    if value is None or parse_holdout(value):
        return None
    return "give NAME=FRACTION with 0 < FRACTION < 1, e.g. validation=0.33"


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    """``wdr-pipe fetch``: the indexes, the image settings (``FetchConfig``), how to fetch
    (``FetchOptions``, ``DownloadConfig``) and what to do with the inputs and the failures."""

    indexes: Tuple[str, ...] = setting(argument=True, path="any", exists=True, help="Index files or folders.")
    split: Optional[str] = setting(None, help="Split name (default: the index file's stem, e.g. train).")
    label_map: Optional[str] = setting(None, path="file", exists=True,
                                       help="CSV labelId,taskId,labelName,taskName.")
    size: int = from_config(FetchConfig, "size", help="Output size in pixels (see --resize-mode).")
    resize_mode: str = from_config(FetchConfig, "resize_mode",
                                   help="shorter/longer: that side becomes --size; center_crop/pad: a --size square.")
    quality: int = from_config(FetchConfig, "quality", help="JPEG quality of the stored images.")
    min_size: int = from_config(FetchConfig, "min_size", help="Reject images whose shorter side is smaller.")
    shard_size: int = from_config(FetchOptions, "shard_size", help="Rows per shard (one dask task each).")
    threads: int = from_config(FetchOptions, "threads", help="Download threads per worker.")
    per_host: int = from_config(FetchOptions, "per_host",
                                help="At most this many downloads at once per host in each worker "
                                     "(raise it to --threads for a one-host index).")
    timeout: float = from_config(DownloadConfig, "read_timeout", "connect_timeout",
                                 help="Connect/read timeout per request, seconds.")
    deadline: float = from_config(DownloadConfig, "deadline",
                                  help="Overall time limit per image, retries included, seconds.")
    retries: int = from_config(DownloadConfig, "retries", help="Retries on connection errors, 5xx and 429.")
    max_bytes: int = from_config(DownloadConfig, "max_bytes", help="Largest body accepted per image.")
    limit: Optional[int] = setting(None, bound=LIMIT, help="Fetch only the first N rows of each split.")
    retry_failed: bool = setting(False, help="Also fetch again the failed rows of finished shards.")
    holdout: Optional[str] = setting(
        None, check=holdout_problem, metavar="NAME=FRACTION",
        help="Cut split NAME from the one labelled input split: that fraction of its rows, chosen by a "
             "hash of the image id (e.g. validation=0.33 for the Clothing Attributes folder).")
    max_failed: Optional[float] = setting(
        None, bound=Bound("--max-failed", 0, 1, integer=False, optional=True), metavar="FRACTION",
        help="Exit with code 3 when more than this fraction of the fetched rows failed (e.g. 0.05) "
             "[default: never; failures are reported and the exit code is 0].")

    def __post_init__(self):
        check_settings("fetch", self)
        if not self.indexes:
            raise BadSetting("fetch: no indexes; name one or more index files or folders", "indexes")

    def configs(self) -> Tuple[FetchConfig, FetchOptions]:
        return build(FetchConfig, self), build(FetchOptions, self, download=build(DownloadConfig, self))

    def run(self, store, cluster: Cluster = Cluster(), progress: Hook = None) -> StageResult:
        """Fetch the indexes into ``store``; see ``fetch.stage.fetch``."""
        from .fetch.stage import fetch

        return fetch(store, self.indexes, *self.configs(), split=self.split, label_map=self.label_map,
                     limit=self.limit, retry_failed=self.retry_failed, workers=cluster.workers,
                     scheduler=cluster.scheduler, progress=progress, holdout=parse_holdout(self.holdout))

    def verdict(self, result: StageResult) -> None:
        """``TooManyFailed`` when more than ``max_failed`` of the attempted rows of ``result`` failed."""
        attempted = result.ok + result.failed
        if self.max_failed is not None and attempted and result.failed / attempted > self.max_failed:
            raise TooManyFailed(
                f"{result.failed} of {attempted} images failed ({result.failed / attempted:.1%}), more than "
                f"--max-failed {self.max_failed:g} allows; see the failure reasons above "
                "('wdr-pipe store info' lists them by split)")


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """``wdr-pipe features``: the splits and the feature settings (``FeatureConfig``)."""

    splits: Tuple[str, ...] = setting((), option="--split", help=SPLITS_HELP)
    hog_size: int = from_config(FeatureConfig, "hog_size", help="Images are resized to SIZE x SIZE.")
    orientations: int = from_config(FeatureConfig, "orientations", help="HOG orientation bins.")
    bins: int = from_config(FeatureConfig, "bins", help="Colour histogram bins per HSV channel.")
    keep_background: bool = from_config(FeatureConfig, "ignore_background", invert=True,
                                        help="Count near-white background pixels in the histogram.")
    dtype: str = from_config(FeatureConfig, "dtype", help="Stored float type.")

    def __post_init__(self):
        check_settings("features", self)

    def config(self) -> FeatureConfig:
        return build(FeatureConfig, self)

    def run(self, store, cluster: Cluster = Cluster(), progress: Hook = None, rebuild: bool = False) -> StageResult:
        """Compute the missing feature shards; see ``features.stage.compute_features``."""
        from .features.stage import compute_features

        return compute_features(store, self.splits or None, self.config(), rebuild=rebuild, workers=cluster.workers,
                                scheduler=cluster.scheduler, progress=progress)


@dataclasses.dataclass(frozen=True)
class StatsSettings:
    """``wdr-pipe stats``: the splits and the label statistics' settings (``StatsConfig``)."""

    splits: Tuple[str, ...] = setting((), option="--split", help="Split(s) to do [default: every labelled split].")
    dim: int = from_config(StatsConfig, "dim", help="Label embedding dimension.")
    alpha: float = from_config(StatsConfig, "alpha", help="Exponent of the label weights.")
    epochs: int = from_config(StatsConfig, "epochs", help="Epochs of the embedding fit.")
    seed: int = from_config(StatsConfig, "seed", help="Seed of the embedding fit.")
    pos_weight_clip: float = from_config(StatsConfig, "pos_weight_clip", help="Clip BCE pos_weight to [1/c, c].")

    def __post_init__(self):
        check_settings("stats", self)

    def config(self) -> StatsConfig:
        return build(StatsConfig, self)

    def run(self, store, progress: Hook = None, rebuild: bool = False) -> StageResult:
        """Write the label statistics; see ``stats.stage.compute_stats``."""
        from .stats.stage import compute_stats

        return compute_stats(store, self.splits or None, self.config(), progress=progress, rebuild=rebuild)


__all__ = ["FeatureSettings", "FetchSettings", "StatsSettings", "holdout_problem", "parse_holdout"]
