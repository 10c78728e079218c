"""The accepted range of every numeric setting of the data stages.

Every numeric setting of a stage has one ``Bound`` (``wdr_pipe/checks.py``) here: the config checks
itself with it in ``__post_init__`` (for library users) and the CLI builds its click type from the
same bound, so both refuse the same values with a message that names the option, the value and the
accepted range: ``fetch config: size 5 (--size): use 8 to 4,096 px``. (This module imports nothing
heavy, so the CLI reads the ranges without loading the stages.)
"""
from __future__ import annotations

from ..checks import Bound, check_all, check_choice

__all__ = ["Bound", "check_all", "check_choice", "RESIZE_MODES", "FETCH_BOUNDS", "DOWNLOAD_BOUNDS",
           "OPTION_BOUNDS", "FEATURE_BOUNDS", "STATS_BOUNDS"]

# -- the ranges (config field -> Bound) -------------------------------------------
RESIZE_MODES = ("shorter", "longer", "center_crop", "pad")

# FetchConfig (imageops.py)
FETCH_BOUNDS = {  # FetchConfig field -> accepted range (the CLI options use the same)
    "size": Bound("--size", 8, 4096, unit="px"),
    "quality": Bound("--quality", 1, 100),
    "min_size": Bound("--min-size", 1, 65535, unit="px"),   # 65535: the largest side a JPEG can have
    "max_pixels": Bound("max_pixels", 1, 2**40),
    "version": Bound("version", 0, 2**31 - 1),
}

# DownloadConfig (download.py)
DOWNLOAD_BOUNDS = {  # DownloadConfig field -> accepted range (the CLI options use the same)
    "connect_timeout": Bound("--timeout", 0, 3600, integer=False, lo_open=True, unit="s"),
    "read_timeout": Bound("--timeout", 0, 3600, integer=False, lo_open=True, unit="s"),
    "deadline": Bound("--deadline", 0, 86400, integer=False, lo_open=True, unit="s"),
    "retries": Bound("--retries", 0, 100),
    "backoff": Bound("backoff", 0, 3600, integer=False, unit="s"),
    "max_backoff": Bound("max_backoff", 0, 3600, integer=False, unit="s"),
    "max_bytes": Bound("--max-bytes", 1024, 2**31, unit="bytes"),
    "max_redirects": Bound("max_redirects", 0, 100),
    "pool_size": Bound("pool_size", 1, 4096),
}

# FetchOptions (fetch_shard.py)
OPTION_BOUNDS = {  # FetchOptions field -> accepted range (the CLI options use the same)
    "shard_size": Bound("--shard-size", 1, 100_000, unit="rows"),  # a shard's images are held in memory
    "threads": Bound("--threads", 1, 1024),
    "per_host": Bound("--per-host", 1, 1024),
}

# FeatureConfig (features.py)
FEATURE_BOUNDS = {  # FeatureConfig field -> accepted range (the CLI options use the same)
    "hog_size": Bound("--hog-size", 16, 512, unit="px"),
    "orientations": Bound("--orientations", 1, 180),
    "cell": Bound("cell", 1, 64, unit="px"),
    "block": Bound("block", 1, 16),
    "bins": Bound("--bins", 1, 64),
    "background_max_s": Bound("background_max_s", 0, 1, integer=False),
    "background_min_v": Bound("background_min_v", 0, 1, integer=False),
    "version": Bound("version", 0, 2**31 - 1),
}

# StatsConfig (label_stats.py)
STATS_BOUNDS = {  # StatsConfig field -> accepted range (the CLI options use the same)
    "dim": Bound("--dim", 1, 1024),
    "alpha": Bound("--alpha", 0, 1, integer=False),
    "epochs": Bound("--epochs", 0, 100_000),
    "lr": Bound("lr", 0, 10, integer=False, lo_open=True),
    "x_max": Bound("x_max", 0, 1e9, integer=False, lo_open=True),
    "seed": Bound("--seed", 0, 2**32 - 1),
    "pos_weight_clip": Bound("--pos-weight-clip", 1, 1e6, integer=False),
    "version": Bound("version", 0, 2**31 - 1),
}
