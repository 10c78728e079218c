"""The features stage: image shards -> HOG and colour-histogram shards.

For every committed image shard ``images/<split>/part-NNNNN.parquet`` it
writes ``features/<key>/<split>/part-NNNNN.parquet``, row-aligned with the
image shard (same image_id order), schema ``features_schema(hog_dim,
hist_dim, dtype)``, then its commit marker last. ``<key>`` is the key of the
``FeatureConfig`` (``configs.py``); ``features/<key>/config.json`` holds the
config. A feature shard is reused when it is current (its commit marker names
the image shard as it is now: ``store.features.plan``), so a second run
decodes nothing, a re-fetched image shard is recomputed, and a changed config
writes under a new key beside the old one.

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
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...cache import Store, as_store, commit, write_config, write_result
from ...cache.atomic import staged_path
from ...cache.derived import DerivedShard
from ...imaging import decode_rgb, image_task
from ...progress import Hook
from ...result import StageResult
from ..configs import FeatureConfig
from ..runner import Cluster, run_tasks
from .color import color_hist_batch
from .hog import hog_batch

log = logging.getLogger("wdr_pipe")

BATCH = 64                # images decoded and computed together (one Parquet row group)
# HOG values hardly compress: snappy over byte-stream-split floats keeps 82% of the bytes in 60% of
# the write time of zstd-1 (77%); no dictionaries or statistics for the float lists.
WRITE_OPTIONS = dict(compression="snappy", use_dictionary=["image_id"], write_statistics=["image_id"],
                     use_byte_stream_split=["hog.list.element", "color_hist.list.element"])


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
class FeatureShard(DerivedShard):
    """A feature shard to compute (``DerivedShard``) and the config to compute it with."""

    cfg: FeatureConfig


def features_task(task: FeatureShard, on_progress) -> Dict[str, object]:
    """Compute one feature shard from one image shard; writes the parquet, then its commit marker."""
    start = time.monotonic()
    counts = {"done": 0, "ok": 0, "failed": 0, "nbytes": 0}
    with image_task(), staged_path(Path(task.out)) as tmp:  # beside the old shard, readable until the commit
        _write_shard(task, tmp, counts, on_progress)
    marker = {"rows": counts["done"], "errors": counts["failed"], "seconds": round(time.monotonic() - start, 3),
              "key": task.cfg.key, "source": task.source}
    commit({Path(task.out): tmp}, task.out, marker)
    return {"split": task.split, **marker}


def _write_shard(task: FeatureShard, path: Path, counts: Dict[str, int], on_progress) -> None:
    """The features of every row of ``task.image_shard``, a batch at a time, into ``path``."""
    cfg, schema = task.cfg, task.cfg.schema()
    np_dtype = np.float16 if cfg.dtype == "float16" else np.float32
    source = pq.ParquetFile(task.image_shard)
    with pq.ParquetWriter(path, schema, **WRITE_OPTIONS) as writer:
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


# -- the stage -----------------------------------------------------------------


def plan(store: Store, splits: Sequence[str], cfg: FeatureConfig, rebuild: bool
         ) -> Tuple[List[FeatureShard], Dict[str, Dict[str, int]], int]:
    """Tasks for the shards to compute, per-split counts of the reused ones, and the number of images to do."""
    expected = cfg.schema()
    todo, summary, images = store.features.plan(
        cfg.key, splits, lambda schema: None if schema.equals(expected) else "its schema is not the one of this config",
        rebuild)
    for s in summary.values():
        s["images_computed"] = 0
    return [FeatureShard(d.split, d.image_shard, d.out, d.source, cfg) for d in todo], summary, images


def _summary_line(split: str, s: Dict[str, int]) -> str:
    return (f"{split}: {s['rows'] - s['errors']} images, {s['errors']} undecodable; {s['shards_computed']} shards "
            f"computed now, {s['shards_reused']} reused")


def compute_features(store, splits: Optional[Sequence[str]] = None, cfg: FeatureConfig = FeatureConfig(), *,
                     rebuild: bool = False, workers: Optional[int] = None, scheduler: Optional[str] = None,
                     progress: Hook = None, timeout: Optional[float] = None) -> StageResult:
    """Compute the missing feature shards of ``splits`` (default: every split with image shards).

    ``rebuild`` recomputes every shard of those splits under the key. ``timeout``
    (seconds, default 120 + 0.1 per image to compute) bounds the whole run.
    """
    start = time.monotonic()
    Cluster(workers, scheduler)
    store = as_store(store)
    splits = store.input_splits(splits)
    with store.writing("features", [store.features.dir(cfg.key, split) for split in splits]):
        return _compute(store, splits, cfg, rebuild, workers, scheduler, progress, timeout, start)


def _compute(store, splits: Sequence[str], cfg: FeatureConfig, rebuild: bool, workers: Optional[int],
             scheduler: Optional[str], progress: Hook, timeout: Optional[float], start: float) -> StageResult:
    root = store.features.root(cfg.key)
    if rebuild or not store.features.config_path(cfg.key).exists():
        write_config(store.features.config_path(cfg.key), cfg, hog_dim=cfg.hog_dim, hist_dim=cfg.hist_dim)
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
                         splits=summary, details={"images_computed": total("images_computed")},
                         summary=[_summary_line(split, s) for split, s in summary.items()])
    write_result(root, result)
    return result
