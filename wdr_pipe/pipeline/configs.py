"""The configs of the data stages: every setting's default, accepted range and choices, said once.

Each is a frozen dataclass that checks itself in ``__post_init__``; hashed, ``FetchConfig``,
``FeatureConfig`` and ``StatsConfig`` are their stage's cache key (field names and order are
part of the key: never reorder, only append). The commands' settings (``settings.py``) copy
their fields from here, and the CLI's options and the ``run`` file's keys come from those. This
module imports nothing heavy, so the CLI reads it without loading the stages; the model side
imports ``FetchConfig`` (how a new photo is resized) and ``FeatureConfig`` (the Wide input) from it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..checks import Bound, check_settings, setting
from ..errors import BadSetting

RESIZE_MODES = ("shorter", "longer", "center_crop", "pad")
BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")   # of hog.normalize_blocks
COLOR_SPACES = ("HSV", "RGB")                       # of color.color_hist_batch
DTYPES = ("float32", "float16")
FEATURE_CODE_VERSION = 2  # bump when a change of the feature code changes the numbers
LIMIT = Bound("--limit", 1, None, optional=True)  # fetch's first rows of each split (None: all)


def _text(value) -> Optional[str]:
    return None if isinstance(value, str) and value.strip() else "give a non-empty string"


def _flag(value) -> Optional[str]:
    return None if isinstance(value, bool) else "use True or False"


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    """What the stored images look like; hashed, it is the store's image key."""

    size: int = setting(320, bound=Bound("--size", 8, 4096, unit="px"))
    resize_mode: str = setting("shorter", choices=RESIZE_MODES)
    quality: int = setting(95, bound=Bound("--quality", 1, 100))
    # smaller sources (either side) are rejected; 65535: the largest side a JPEG can have
    min_size: int = setting(32, bound=Bound("--min-size", 1, 65535, unit="px"))
    # decompression-bomb guard, checked from the header
    max_pixels: int = setting(80_000_000, bound=Bound("max_pixels", 1, 2**40))
    # 2: DCT-scaled decode at full or half scale (imaging._dct_min_size)
    version: int = setting(2, bound=Bound("version", 0, 2**31 - 1))

    def __post_init__(self):
        check_settings("fetch config", self)


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    """How one image is downloaded: timeouts, retries, the size cap (``download.Downloader``)."""

    connect_timeout: float = setting(5.0, bound=Bound("--timeout", 0, 3600, integer=False, lo_open=True, unit="s"))
    read_timeout: float = setting(10.0, bound=Bound("--timeout", 0, 3600, integer=False, lo_open=True, unit="s"))
    # seconds per image, all URLs and retries included
    deadline: float = setting(60.0, bound=Bound("--deadline", 0, 86400, integer=False, lo_open=True, unit="s"))
    # extra attempts per URL on retryable failures
    retries: int = setting(3, bound=Bound("--retries", 0, 100))
    # first backoff; doubles each retry, plus jitter
    backoff: float = setting(0.5, bound=Bound("backoff", 0, 3600, integer=False, unit="s"))
    # also caps Retry-After
    max_backoff: float = setting(10.0, bound=Bound("max_backoff", 0, 3600, integer=False, unit="s"))
    max_bytes: int = setting(20 * 2**20, bound=Bound("--max-bytes", 1024, 2**31, unit="bytes"))
    max_redirects: int = setting(5, bound=Bound("max_redirects", 0, 100))
    pool_size: int = setting(16, bound=Bound("pool_size", 1, 4096))
    user_agent: str = setting("wdr-pipe (+https://github.com/wdr-pipe)", check=_text, option="user_agent")

    def __post_init__(self):
        check_settings("download config", self)


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """How to fetch (does not change the result, so not part of the key)."""

    # a shard's images are held in memory until it is written
    shard_size: int = setting(1000, bound=Bound("--shard-size", 1, 100_000, unit="rows"))
    threads: int = setting(16, bound=Bound("--threads", 1, 1024))
    per_host: int = setting(8, bound=Bound("--per-host", 1, 1024))
    download: DownloadConfig = dataclasses.field(default_factory=DownloadConfig)

    def __post_init__(self):
        check_settings("fetch options", self)
        if not isinstance(self.download, DownloadConfig):
            raise BadSetting(f"fetch options: download {self.download!r}: give a DownloadConfig", "download")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Everything that decides the numbers of a feature shard; its hash is the cache key."""

    # images are resized to hog_size x hog_size (HOG and histogram)
    hog_size: int = setting(128, bound=Bound("--hog-size", 16, 512, unit="px"))
    orientations: int = setting(9, bound=Bound("--orientations", 1, 180))
    cell: int = setting(8, bound=Bound("cell", 1, 64, unit="px"))       # pixels per cell (square)
    block: int = setting(2, bound=Bound("block", 1, 16))                # cells per block (square)
    block_norm: str = setting("L2-Hys", choices=BLOCK_NORMS, option="block_norm")
    color_space: str = setting("HSV", choices=COLOR_SPACES, option="color_space")  # HSV: OpenCV 8-bit
    bins: int = setting(8, bound=Bound("--bins", 1, 64))                # per channel: bins**3 values
    ignore_background: bool = setting(True, check=_flag, option="ignore_background")
    # near-white: S/255 < background_max_s and V/255 > background_min_v
    background_max_s: float = setting(0.1, bound=Bound("background_max_s", 0, 1, integer=False))
    background_min_v: float = setting(0.9, bound=Bound("background_min_v", 0, 1, integer=False))
    resize: str = setting("area", choices=("area",), option="resize")  # cv2.INTER_AREA, whole image, no crop
    dtype: str = setting("float32", choices=DTYPES)
    version: int = setting(FEATURE_CODE_VERSION, bound=Bound("version", 0, 2**31 - 1))

    def __post_init__(self):
        check_settings("feature config", self)
        if self.hog_size < self.cell * self.block:
            raise BadSetting(f"feature config: hog_size {self.hog_size} (--hog-size) is smaller than one block "
                             f"({self.block} cells of {self.cell} px); use {self.cell * self.block} or more",
                             "hog_size")

    @property
    def hog_dim(self) -> int:
        """Length of a HOG descriptor: every block of cells (a stride of one cell), each cell's bins."""
        blocks = self.hog_size // self.cell - self.block + 1
        return blocks * blocks * self.block * self.block * self.orientations

    @property
    def hist_dim(self) -> int:
        return self.bins ** 3

    @property
    def key(self) -> str:
        from ..cache.keys import config_key

        return config_key(self)

    def schema(self):
        """The Arrow schema of this config's feature shards."""
        from ..cache.schema import features_schema

        return features_schema(self.hog_dim, self.hist_dim, self.dtype)

    def hog_args(self) -> dict:
        """The keyword arguments of ``hog.hog_batch``."""
        return dict(orientations=self.orientations, cell=self.cell, block=self.block, block_norm=self.block_norm)

    def hist_args(self) -> dict:
        """The keyword arguments of ``color.color_hist_batch``."""
        return dict(bins=self.bins, color_space=self.color_space, ignore_background=self.ignore_background,
                    background_max_s=self.background_max_s, background_min_v=self.background_min_v)


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Settings of the label statistics; hashed, they key ``stats/<split>/``."""

    dim: int = setting(20, bound=Bound("--dim", 1, 1024))                  # label embedding size (the paper: 20)
    alpha: float = setting(0.75, bound=Bound("--alpha", 0, 1, integer=False))  # label weight exponent (GloVe's)
    epochs: int = setting(1000, bound=Bound("--epochs", 0, 100_000))      # full-batch Adagrad epochs of the fit
    lr: float = setting(0.05, bound=Bound("lr", 0, 10, integer=False, lo_open=True))  # Adagrad learning rate
    # GloVe weighting: f(c) = min(1, (c / x_max)^0.75)
    x_max: float = setting(100.0, bound=Bound("x_max", 0, 1e9, integer=False, lo_open=True))
    seed: int = setting(0, bound=Bound("--seed", 0, 2**32 - 1))            # embedding initialisation
    # pos_weight is clipped to [1 / clip, clip]
    pos_weight_clip: float = setting(100.0, bound=Bound("--pos-weight-clip", 1, 1e6, integer=False))
    version: int = setting(2, bound=Bound("version", 0, 2**31 - 1))  # 2: fitted on the labels that occur

    def __post_init__(self):
        check_settings("stats config", self)


__all__ = ["BLOCK_NORMS", "COLOR_SPACES", "DTYPES", "DownloadConfig", "FEATURE_CODE_VERSION", "FeatureConfig",
           "FetchConfig", "FetchOptions", "LIMIT", "RESIZE_MODES", "StatsConfig"]
