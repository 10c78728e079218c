"""The features stage: image shards -> HOG and colour-histogram shards.

For every committed image shard ``images/<split>/part-NNNNN.parquet`` it
writes ``features/<key>/<split>/part-NNNNN.parquet``, row-aligned with the
image shard (same image_id order), schema ``features_schema(hog_dim,
hist_dim, dtype)``, then ``part-NNNNN.stats.json`` last as the commit marker.
``<key>`` is ``config_key(FeatureConfig)``; ``features/<key>/config.json``
holds the config. A feature shard is reused when its stats.json names the
same input (the image shard's size and the sha256 of its stats.json), so a
second run decodes nothing, a re-fetched image shard is recomputed, and a
changed config writes under a new key beside the old one.

Per image: decode the JPEG (simplejpeg, DCT-domain downscale to the smallest
size of at least ``hog_size`` on both sides; OpenCV as a fallback for what
libjpeg-turbo refuses, e.g. CMYK), resize the whole image to ``hog_size`` x
``hog_size`` with ``cv2.INTER_AREA`` (no crop: the aspect ratio is not
kept), then HOG of its grayscale (``cv2.COLOR_RGB2GRAY``, uint8) by
``hog.hog_batch`` and the colour histogram of the resized RGB by
``color.color_hist_batch``. A row whose bytes do not decode gets null
features and an ``error`` string.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..cache import Store, as_store, commit_path, config_key, write_config, write_result
from ..cache.atomic import publish, staged_path
from ..cache.derived import DerivedShard, plan_derived
from ..cache.schema import features_schema
from ..errors import UserError
from ..progress import Hook
from ..result import StageResult
from .checks import FEATURE_BOUNDS, check_all, check_choice
from .color import COLOR_SPACES, color_hist_batch
from .hog import BLOCK_NORMS, hog_batch, hog_dim
from ..imaging import decode_rgb, image_task
from .runner import check_scheduler, check_workers, run_tasks

log = logging.getLogger("wdr_pipe")

FEATURE_CODE_VERSION = 2  # bump when a change of this code changes the numbers
BATCH = 64                # images decoded and computed together (one Parquet row group)
DTYPES = ("float32", "float16")
# HOG values hardly compress: snappy over byte-stream-split floats keeps 82% of the bytes in 60% of
# the write time of zstd-1 (77%); no dictionaries or statistics for the float lists.
WRITE_OPTIONS = dict(compression="snappy", use_dictionary=["image_id"], write_statistics=["image_id"],
                     use_byte_stream_split=["hog.list.element", "color_hist.list.element"])



@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Everything that decides the numbers of a feature shard; its hash is the cache key."""

    hog_size: int = 128            # images are resized to hog_size x hog_size (HOG and histogram)
    orientations: int = 9
    cell: int = 8                  # pixels per cell (square)
    block: int = 2                 # cells per block (square)
    block_norm: str = "L2-Hys"
    color_space: str = "HSV"       # "HSV" (OpenCV 8-bit) or "RGB"
    bins: int = 8                  # per channel: bins**3 histogram values
    ignore_background: bool = True
    background_max_s: float = 0.1  # near-white: S/255 < this ...
    background_min_v: float = 0.9  # ... and V/255 > this
    resize: str = "area"           # cv2.INTER_AREA on the whole image, no crop
    dtype: str = "float32"         # or "float16"
    version: int = FEATURE_CODE_VERSION

    def __post_init__(self):
        check_choice("feature config", "block_norm", self.block_norm, BLOCK_NORMS)
        check_choice("feature config", "color_space", self.color_space, COLOR_SPACES)
        check_choice("feature config", "--dtype", self.dtype, DTYPES)
        check_choice("feature config", "resize", self.resize, ("area",))
        check_all("feature config", self, FEATURE_BOUNDS)
        if not isinstance(self.ignore_background, bool):
            raise UserError(f"feature config: ignore_background {self.ignore_background!r}: use True or False")
        if self.hog_size < self.cell * self.block:
            raise UserError(f"feature config: hog_size {self.hog_size} (--hog-size) is smaller than one block "
                            f"({self.block} cells of {self.cell} px); use {self.cell * self.block} or more")

    @property
    def hog_dim(self) -> int:
        return hog_dim(self.hog_size, self.orientations, self.cell, self.block)

    @property
    def hist_dim(self) -> int:
        return self.bins ** 3

    @property
    def key(self) -> str:
        return config_key(self)

    def schema(self) -> pa.Schema:
        return features_schema(self.hog_dim, self.hist_dim, self.dtype)

    def hog_args(self) -> dict:
        """The keyword arguments of ``hog.hog_batch``."""
        return dict(orientations=self.orientations, cell=self.cell, block=self.block, block_norm=self.block_norm)

    def hist_args(self) -> dict:
        """The keyword arguments of ``color.color_hist_batch``."""
        return dict(bins=self.bins, color_space=self.color_space, ignore_background=self.ignore_background,
                    background_max_s=self.background_max_s, background_min_v=self.background_min_v)


# -- per image -----------------------------------------------------------------


def decode_resize(data: Optional[bytes], size: int) -> np.ndarray:
    """Stored JPEG bytes -> (size, size, 3) uint8 RGB (whole image, no crop); ValueError if unreadable."""
    return cv2.resize(decode_rgb(data, size), (size, size), interpolation=cv2.INTER_AREA)


def compute_batch(jpegs: Sequence[Optional[bytes]], cfg: FeatureConfig):
    """Decode and compute one batch -> (hog (n, D), hist (n, bins**3), errors: list of str or None)."""
    n, size = len(jpegs), cfg.hog_size
    rgb = np.zeros((n, size, size, 3), np.uint8)
    errors: List[Optional[str]] = [None] * n
    for i, data in enumerate(jpegs):
        try:
            rgb[i] = decode_resize(data, size)
        except Exception as e:  # any undecodable row becomes a null row, never a crashed shard
            errors[i] = f"{type(e).__name__}: {e}"[:300]
    gray = cv2.cvtColor(rgb.reshape(n * size, size, 3), cv2.COLOR_RGB2GRAY).reshape(n, size, size)
    return hog_batch(gray, **cfg.hog_args()), color_hist_batch(rgb, **cfg.hist_args()), errors


def _list_column(values: np.ndarray, typ: pa.DataType, null: np.ndarray) -> pa.Array:
    flat = pa.array(values.ravel(), type=typ.value_type)
    return pa.FixedSizeListArray.from_arrays(flat, type=typ, mask=pa.array(null))


# -- per shard (runs on a dask worker) -------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardTask(DerivedShard):
    """A feature shard to compute (``DerivedShard``) and the config to compute it with."""

    cfg: FeatureConfig


def features_task(task: ShardTask, on_progress) -> Dict[str, object]:
    """Compute one feature shard from one image shard; writes the parquet, then its stats.json."""
    start = time.monotonic()
    cfg, schema = task.cfg, task.cfg.schema()
    np_dtype = np.float16 if cfg.dtype == "float16" else np.float32
    counts = {"done": 0, "ok": 0, "failed": 0, "nbytes": 0}
    with image_task():
        source = pq.ParquetFile(task.image_shard)
        with staged_path(Path(task.out)) as tmp:  # beside the old shard, which stays readable until publish
            with pq.ParquetWriter(tmp, schema, **WRITE_OPTIONS) as writer:
                for batch in source.iter_batches(batch_size=BATCH, columns=["image_id", "jpeg"]):
                    jpegs = batch.column(1).to_pylist()
                    hogs, hists, errors = compute_batch(jpegs, cfg)
                    null = np.array([e is not None for e in errors])
                    writer.write_table(pa.Table.from_arrays([
                        batch.column(0).cast(pa.string()),
                        _list_column(hogs.astype(np_dtype), schema.field("hog").type, null),
                        _list_column(hists.astype(np_dtype), schema.field("color_hist").type, null),
                        pa.array(errors, pa.string()),
                    ], schema=schema))
                    for image_id, e in zip(batch.column(0).to_pylist(), errors):
                        if e is not None:
                            log.warning("%s: image %s: %s", task.image_shard, image_id, e)
                    counts["done"] += len(jpegs)
                    counts["failed"] += int(null.sum())
                    counts["ok"] = counts["done"] - counts["failed"]
                    counts["nbytes"] += sum(len(j) for j in jpegs if j)
                    on_progress(counts)
    stats = {"rows": counts["done"], "errors": counts["failed"], "seconds": round(time.monotonic() - start, 3),
             "key": cfg.key, "source": task.source}
    publish({Path(task.out): tmp}, commit_path(Path(task.out)), json.dumps(stats, indent=2) + "\n")
    return {"split": task.split, **stats}


# -- the stage -----------------------------------------------------------------


def plan(store: Store, splits: Sequence[str], cfg: FeatureConfig, rebuild: bool
         ) -> Tuple[List[ShardTask], Dict[str, Dict[str, int]], int]:
    """Tasks for the shards to compute, per-split counts of the reused ones, and the number of images to do."""
    expected = cfg.schema()
    todo, summary, images = plan_derived(
        store, splits, lambda split: store.features_dir(cfg.key, split), "feature", "features",
        lambda schema: None if schema.equals(expected) else "its schema is not the one of this config", rebuild)
    for s in summary.values():
        s["images_computed"] = 0
    return [ShardTask(d.split, d.image_shard, d.out, d.source, cfg) for d in todo], summary, images


def compute_features(store, splits: Optional[Sequence[str]] = None, cfg: FeatureConfig = FeatureConfig(), *,
                     rebuild: bool = False, workers: Optional[int] = None, scheduler: Optional[str] = None,
                     progress: Hook = None, timeout: Optional[float] = None) -> StageResult:
    """Compute the missing feature shards of ``splits`` (default: every split with image shards).

    ``rebuild`` recomputes every shard of those splits under the key. ``timeout``
    (seconds, default 120 + 0.1 per image to compute) bounds the whole run.
    """
    start = time.monotonic()
    check_workers(workers)
    check_scheduler(scheduler)
    store = as_store(store)
    splits = store.input_splits(splits)
    root = store.features_root(cfg.key)
    if rebuild or not store.feature_config_path(cfg.key).exists():
        write_config(store.feature_config_path(cfg.key), cfg, hog_dim=cfg.hog_dim, hist_dim=cfg.hist_dim)
    tasks, summary, todo = plan(store, splits, cfg, rebuild)
    if timeout is None:  # a bound, about 100x what a slow machine needs
        timeout = 120.0 + 0.1 * todo
    log.info("features %s: %d shards to compute (%d images), %d reused", cfg.key, len(tasks), todo,
             sum(s["shards_reused"] for s in summary.values()))
    results = run_tasks(features_task, tasks, stage="features", total=todo, scheduler=scheduler,
                        workers=workers, progress=progress, timeout=timeout,
                        final=lambda r: {"done": r["rows"], "ok": r["rows"] - r["errors"], "failed": r["errors"]},
                        describe=lambda t: f"the features of {t.image_shard}", log_path=store.log_path("features"))
    for r in results:
        s = summary[r["split"]]
        s["shards_computed"] += 1
        s["rows"] += r["rows"]
        s["errors"] += r["errors"]
        s["images_computed"] += r["rows"]
    total = lambda name: sum(s[name] for s in summary.values())  # noqa: E731
    result = StageResult("features", cfg.key, str(root), time.monotonic() - start,
                         ran=total("shards_computed"), reused=total("shards_reused"),
                         counts={"ok": total("rows") - total("errors"), "failed": total("errors")},
                         splits=summary, details={"images_computed": total("images_computed")})
    write_result(root, result)
    return result
