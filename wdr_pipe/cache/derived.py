"""Shards derived one-to-one from image shards (features, embeddings): which to reuse, which to compute.

A derived shard ``<root>/<split>/part-NNNNN.parquet`` is reused when its commit
marker names the image shard as it is now (``shard_identity``) and the shard
itself is readable, row-aligned with the image shard and of the expected type;
otherwise it is (re)computed. One rule, used by every stage that writes such shards.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from .atomic import remove_stale_tmp
from .store import Store, read_commit, shard_identity

log = logging.getLogger("wdr_pipe")

# what a stage expects of a derived shard's Arrow schema: None when it fits, else the problem in words
SchemaCheck = Callable[[pa.Schema], Optional[str]]


@dataclasses.dataclass(frozen=True)
class DerivedShard:
    """One derived shard to compute: from ``image_shard`` (as identified by ``source``) to ``out``."""

    split: str
    image_shard: Path
    out: Path
    source: Dict[str, object]


def split_counts() -> Dict[str, int]:
    """Per-split counters of a derived-shard stage, as its ``StageResult.splits`` reports them."""
    return {"rows": 0, "errors": 0, "shards_computed": 0, "shards_reused": 0}


def check_derived_shard(out: Path, image_shard: Path, stats: dict, what: str, fix: str,
                        schema_problem: SchemaCheck) -> None:
    """A ``UserError`` naming ``out`` and ``fix`` if it is unreadable, of the wrong type, or not the rows
    of ``image_shard`` in the same order."""
    try:
        f = pq.ParquetFile(out)
        rows, schema = f.metadata.num_rows, f.schema_arrow
        ids = f.read(columns=["image_id"]).column(0)
    except (OSError, KeyError, pa.ArrowException) as e:
        raise UserError(f"{out}: unreadable {what} shard ({str(e).splitlines()[0]}); {fix}") from e
    problem = schema_problem(schema)
    if problem is None and rows != stats.get("rows"):
        problem = f"{rows} rows, its stats.json says {stats.get('rows')}"
    if problem is None:
        # ParquetFile rather than pq.read_table, which imports pyarrow.dataset and pandas (0.25 s)
        image_ids = pq.ParquetFile(image_shard).read(columns=["image_id"]).column(0).cast(pa.string())
        if not ids.equals(image_ids):
            problem = f"its image_ids are not those of {image_shard} in the same order"
    if problem:
        raise UserError(f"{out}: damaged {what} shard ({problem}); {fix}")


def plan_derived(store: Store, splits: Sequence[str], out_dir: Callable[[str], Path], what: str, command: str,
                 schema_problem: SchemaCheck, rebuild: bool = False
                 ) -> Tuple[List[DerivedShard], Dict[str, Dict[str, int]], int]:
    """``(to compute, per-split counts of the reused ones, images to compute)`` for ``splits``.

    ``out_dir(split)`` is where the split's derived shards go; ``command`` the wdr-pipe command that
    writes them (named in the fix of a damaged shard). ``rebuild`` recomputes every shard. A shard to
    recompute stays committed (and readable) until its stage publishes the new one.
    """
    todo: List[DerivedShard] = []
    summary: Dict[str, Dict[str, int]] = {}
    images = 0
    for split in splits:
        shards = store.require_images(split)
        d = out_dir(split)
        remove_stale_tmp(d)
        s = summary[split] = split_counts()
        fix = f"run 'wdr-pipe {command} --store {store.root} --split {split} --rebuild' to recompute it"
        for shard in shards:
            out, source = d / shard.name, shard_identity(shard)
            stats = None if rebuild else read_commit(out)
            if stats is not None and stats.get("source") == source:
                check_derived_shard(out, shard, stats, what, fix, schema_problem)
                s["shards_reused"] += 1
                s["rows"] += stats["rows"]
                s["errors"] += stats["errors"]
                continue
            if stats is not None:
                log.info("%s: image shard changed since this %s shard was computed; recomputing", out, what)
            todo.append(DerivedShard(split, shard, out, source))
            images += pq.read_metadata(shard).num_rows
    return todo, summary, images
