"""The accepted range of every numeric stage setting, and the checks that use them.

Every numeric setting of a stage has one ``Bound`` here: the config checks itself with it
in ``__post_init__`` (for library users) and the CLI builds its click type from the same
bound, so both refuse the same values with a message that names the option, the value
and the accepted range: ``fetch config: size 5 (--size): use 8 to 4,096 px``. (This module imports
nothing heavy, so the CLI reads the ranges without loading the stages.)
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

from ..errors import UserError

Number = Union[int, float]


def _number(v: Number) -> str:
    """``4,096``, ``1,000,000``, ``0.5``: whole numbers with thousands separators, never ``1e+06``."""
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True)
class Bound:
    """An accepted range ``lo .. hi`` (``lo_open``: ``lo`` itself excluded) of an int or float setting."""

    option: str                 # how the user spells it: "--size" (or a field name for library-only settings)
    lo: Number
    hi: Number
    integer: bool = True
    lo_open: bool = False
    unit: str = ""

    def text(self) -> str:
        """The accepted range in words: ``8 to 4,096 px``, ``more than 0 up to 3,600 s``."""
        unit = f" {self.unit}" if self.unit else ""
        if self.lo_open:
            return f"more than {_number(self.lo)} up to {_number(self.hi)}{unit}"
        return f"{_number(self.lo)} to {_number(self.hi)}{unit}"

    def problem(self, value) -> Optional[str]:
        """Why ``value`` is refused, or ``None``."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.integer else numbers.Real):
            return f"not {'an integer' if self.integer else 'a number'}; use {self.text()}"
        if not math.isfinite(value):
            return f"use a finite number, {self.text()}"
        low = value <= self.lo if self.lo_open else value < self.lo
        if low or value > self.hi:
            return f"use {self.text()}"
        return None

    def check(self, what: str, value, field: str = "") -> None:
        """``UserError('WHAT: FIELD VALUE (OPTION): use LO to HI')`` when ``value`` is out of range
        (the option is left out where it is the field's own name)."""
        problem = self.problem(value)
        if problem:
            name = field or self.option
            also = f" ({self.option})" if self.option != name else ""
            raise UserError(f"{what}: {name} {value!r}{also}: {problem}")


def check_all(what: str, obj, bounds: dict) -> None:
    """Check every ``{field: Bound}`` of a config object."""
    for name, bound in bounds.items():
        bound.check(what, getattr(obj, name), name)


def check_choice(what: str, option: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"{what}: {option} {value!r}: use one of {', '.join(map(str, choices))}")


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
