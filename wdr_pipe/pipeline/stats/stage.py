"""``wdr-pipe stats``: the label statistics of the labelled splits, under ``STORE/stats/<split>/``.

From the ``labels`` column of a split's committed image shards (the images
actually fetched) it writes:

- ``label_counts.parquet``: ``label int32, count int64``, one row per id of the label space;
- ``cooccurrence.parquet``: ``label_a int32, label_b int32, count int64`` for label_a < label_b
  and count > 0 only (the matrix is symmetric; its diagonal is ``label_counts``);
- ``label_embeddings.parquet``: ``label int32, vector fixed_size_list<float32>[dim]`` (GloVe-style, see glove.py);
- ``label_weights.parquet``: ``label int32, count int64, weight float32, pos_weight float32``;
- ``sample_weights.parquet``: ``image_id string, weight float32`` in image shard order;
- ``config.json``, written last: the ``StatsConfig``, its key and the digest of the inputs.

The numbers are ``numbers.py``'s; this module reads the labels, skips what is current and
writes the tables. A rerun with the same config and the same committed image shards does no work.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ...cache import Store, as_store, config_key, label_space, read_columns, read_json, write_result
from ...cache.atomic import publish, remove_stale_tmp, stage_parquet, staging
from ...cache.jsonfile import json_text
from ...cache.keys import config_doc
from ...errors import UserError
from ...progress import Hook, Progress, emit
from ...result import StageResult
from ..configs import StatsConfig
from .numbers import multi_hot_csr, split_stats

log = logging.getLogger("wdr_pipe")


def inputs_digest(store: Store, split: str, space: np.ndarray) -> str:
    """Digest of what the stats of ``split`` read: committed image shards and the label space."""
    return store.fingerprint(split, hashlib.sha256(np.ascontiguousarray(space).tobytes()).hexdigest())


def _is_current(store: Store, split: str, key: str, digest: str) -> bool:
    if not store.label_stats_complete(split):
        return False
    try:
        doc = read_json(store.label_stats_config_path(split))
    except UserError:
        return False
    return doc.get("key") == key and doc.get("inputs") == digest


def _summary_line(split: str, s: dict) -> str:
    if s["status"] == "computed":
        return (f"{split}: {s['images']} images, {s['labels']} labels, embedding loss "
                f"{s['loss_start']:.3f} -> {s['loss_end']:.4f}; written to {s['dir']}")
    if s["status"] == "cached":
        return f"{split}: up to date ({s['dir']})"
    return f"{split}: skipped ({s['reason']})"


def compute_stats(store, splits: Optional[Sequence[str]] = None, cfg: StatsConfig = StatsConfig(),
                  progress: Hook = None, rebuild: bool = False) -> StageResult:
    """Write ``stats/<split>/`` for each labelled split (default: every split of the store);
    ``rebuild`` recomputes them even when they are up to date.

    The result's ``splits`` holds ``{split: {"status": "computed" | "cached" | "skipped", ...}}``.
    """
    start = time.monotonic()
    store = as_store(store)
    have = store.splits()
    splits = list(have if splits is None else splits)
    unknown = [s for s in splits if s not in have]
    if unknown:
        raise UserError(f"--split {unknown[0]}: no such split in {store.root} (splits: {', '.join(have) or 'none'})")
    space = label_space(store)
    key = config_key(cfg)
    summary: Dict[str, dict] = {}
    emit(progress, Progress("stats", total=len(splits)))
    for i, split in enumerate(splits):
        with store.writing("stats", [store.label_stats_dir(split)]):  # one run per split at a time
            summary[split] = _one_split(store, split, cfg, key, space, rebuild)
        emit(progress, Progress("stats", done=i + 1, total=len(splits), ok=i + 1, message=split))
    counts = collections.Counter(s["status"] for s in summary.values())
    result = StageResult("stats", key, str(store.label_stats_root), time.monotonic() - start,
                         ran=counts["computed"], reused=counts["cached"], counts=dict(sorted(counts.items())),
                         splits=summary, summary=[_summary_line(split, s) for split, s in summary.items()])
    if summary:
        write_result(store.label_stats_root, result)
    return result


def _one_split(store: Store, split: str, cfg: StatsConfig, key: str, space: np.ndarray, rebuild: bool) -> dict:
    out = store.label_stats_dir(split)
    remove_stale_tmp(out)  # what a killed run left
    if not store.image_shards(split):
        log.info("stats: skipping %s (no committed image shards)", split)
        return {"status": "skipped", "reason": "no committed image shards"}
    digest = inputs_digest(store, split, space)
    if not rebuild and _is_current(store, split, key, digest):
        log.info("stats: %s is up to date (%s)", split, out)
        return {"status": "cached", "dir": str(out), "key": key}
    t = read_columns(store.image_shards(split), ["image_id", "labels"])
    image_ids, labels = t.column("image_id").to_numpy(zero_copy_only=False), t.column("labels")
    if labels.null_count == len(labels):
        log.info("stats: skipping %s (no labels: an unlabelled split)", split)
        return {"status": "skipped", "reason": "no labels"}
    x = multi_hot_csr(labels, space, where=str(store.images_dir(split)))
    tables, losses = split_stats(image_ids, x, space, cfg, where=str(store.images_dir(split)))
    fit = {"loss_start": losses[0], "loss_end": losses[-1]}
    # every table is written beside the old one first: the previous statistics stay complete
    # and readable until all new files are, and config.json (the commit) comes last
    with staging() as staged:
        for name, table in tables.items():
            staged[store.label_stats_file(split, name)] = stage_parquet(table, store.label_stats_file(split, name))
    publish(staged, store.label_stats_config_path(split),
            json_text(config_doc(cfg, inputs=digest, images=int(x.shape[0]), labels=len(space), fit=fit)))
    log.info("stats: %s: %d images, %d labels, embedding loss %.3f -> %.4f", split, x.shape[0], len(space),
             losses[0], losses[-1])
    return {"status": "computed", "dir": str(out), "key": key, "images": int(x.shape[0]), "labels": len(space),
            **fit}


__all__: List[str] = ["compute_stats", "inputs_digest"]
