"""A family of shards derived one-to-one from image shards: ``features`` or ``embeddings``.

``STORE/<folder>/<key>/config.json`` holds a key's config; ``<folder>/<key>/<split>/part-NNNNN.parquet``
(+ its commit marker) is derived from ``images/<split>/part-NNNNN.parquet``, row by row. One rule
for every reader and writer: a derived shard is usable when it is committed, *current* (its
marker names the image shard as it is now: ``commit.is_current``) and *aligned* (as many rows as
the image shard, in its order). A stage recomputes a shard that is not current and refuses one
that is current but damaged (``plan``); a reader refuses both with the fix (``shard``).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError, first_line
from .atomic import remove_stale_tmp
from .commit import is_current, read_commit, shard_identity

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


class Derived:
    """The shards of one family in a store. ``what``: a shard's kind in messages ("feature");
    ``command``: the ``wdr-pipe`` command that writes them; ``keys_are``: what a key is called,
    one and several ("feature config", "feature configs"); ``pick``: how to pick one of several;
    ``first``: the flags of a first ``command``."""

    def __init__(self, store, folder: str, what: str, command: str, keys_are: Tuple[str, str], pick: str,
                 first: str = ""):
        self.store, self.folder, self.what, self.command = store, folder, what, command
        self.keys_are, self.pick, self.first = keys_are, pick, first

    # -- paths and keys ------------------------------------------------------------
    def root(self, key: str) -> Path:
        return self.store.root / self.folder / key

    def dir(self, key: str, split: str) -> Path:
        return self.root(key) / split

    def config_path(self, key: str) -> Path:
        """``<folder>/<key>/config.json``: the key's config, written before its first shard."""
        return self.root(key) / "config.json"

    def keys(self) -> List[str]:
        d = self.store.root / self.folder
        return sorted(p.name for p in d.iterdir() if (p / "config.json").exists()) if d.is_dir() else []

    def resolve_key(self, key: Optional[str] = None) -> str:
        """``key``, checked; ``None`` takes the store's only key of this family."""
        keys, root = self.keys(), self.store.root
        if key is None and len(keys) == 1:
            return keys[0]
        if key is None:
            raise UserError(f"{root}: several {self.keys_are[1]} ({', '.join(keys)}); {self.pick}" if keys
                            else f"{root}: no {self.folder} yet; run 'wdr-pipe {self.command} --store {root}"
                                 f"{self.first}' first")
        if key not in keys:
            raise UserError(f"{root}: no {self.keys_are[0]} {key!r}; the store has: {', '.join(keys) or 'none'}")
        return key

    def fix(self, split: str) -> str:
        return f"wdr-pipe {self.command} --store {self.store.root} --split {split}"

    # -- reading: the one rule ----------------------------------------------------
    def shard(self, key: str, split: str, image_shard) -> Path:
        """The committed, current and aligned shard of ``image_shard`` (footers only); a ``UserError``
        naming the shard and the fix otherwise."""
        out = self.dir(key, split) / Path(image_shard).name
        marker = read_commit(out)
        if marker is None:
            raise UserError(f"{out}: no committed {self.what} shard for {image_shard}; run '{self.fix(split)}'")
        if not is_current(marker, image_shard):
            raise UserError(f"{out}: computed from an earlier version of {image_shard} (fetched again since); "
                            f"run '{self.fix(split)}'")
        rows, image_rows = pq.read_metadata(out).num_rows, pq.read_metadata(image_shard).num_rows
        if rows != image_rows:
            self.misaligned(out, split, f"{rows} rows but its image shard has {image_rows}")
        return out

    def misaligned(self, where, split: str, detail: str) -> None:
        """The refusal of rows that are not those of the image shards, in their order."""
        misaligned(where, detail, f"{self.fix(split)} --rebuild")

    def shards(self, key: str, split: str, complete: bool = True) -> List[Tuple[Path, Path]]:
        """``(image shard, derived shard)`` pairs of ``split``, each checked by ``shard``.

        ``complete``: every committed image shard must have its shard (what training needs);
        otherwise image shards whose shard is not current yet are left out (what a reader of a
        store still being computed wants), and only none at all is an error."""
        images = self.store.require_images(split)
        if not complete:
            images = [p for p in images if is_current(read_commit(self.dir(key, split) / p.name), p)]
            if not images:
                raise UserError(f"{self.dir(key, split)}: no committed {self.what} shards for split {split!r}; "
                                f"run '{self.fix(split)}'")
        return [(p, self.shard(key, split, p)) for p in images]

    # -- writing: which shards a stage reuses and which it computes ----------------------
    def plan(self, key: str, splits: Sequence[str], schema_problem: SchemaCheck, rebuild: bool = False
             ) -> Tuple[List[DerivedShard], Dict[str, Dict[str, int]], int]:
        """``(to compute, per-split counts of the reused ones, images to compute)`` for ``splits``.

        A current shard is reused after a check that it is readable, of the type ``schema_problem``
        expects and the rows of its image shard in order; ``rebuild`` recomputes every shard. A shard
        to recompute stays committed (and readable) until its stage publishes the new one."""
        todo: List[DerivedShard] = []
        summary: Dict[str, Dict[str, int]] = {}
        images = 0
        for split in splits:
            shards = self.store.require_images(split)
            folder = self.dir(key, split)
            remove_stale_tmp(folder)
            s = summary[split] = split_counts()
            for shard in shards:
                out = folder / shard.name
                marker = None if rebuild else read_commit(out)
                if is_current(marker, shard):
                    self._check_content(out, shard, marker, split, schema_problem)
                    s["shards_reused"] += 1
                    s["rows"] += marker["rows"]
                    s["errors"] += marker["errors"]
                    continue
                if marker is not None:
                    log.info("%s: image shard changed since this %s shard was computed; recomputing", out, self.what)
                todo.append(DerivedShard(split, shard, out, shard_identity(shard)))
                images += pq.read_metadata(shard).num_rows
        return todo, summary, images

    def _check_content(self, out: Path, image_shard: Path, marker: dict, split: str,
                       schema_problem: SchemaCheck) -> None:
        fix = f"run '{self.fix(split)} --rebuild' to recompute it"
        try:
            f = pq.ParquetFile(out)
            rows, schema = f.metadata.num_rows, f.schema_arrow
            ids = f.read(columns=["image_id"]).column(0)
        except (OSError, KeyError, pa.ArrowException) as e:
            raise UserError(f"{out}: unreadable {self.what} shard ({first_line(e)}); {fix}") from e
        problem = schema_problem(schema)
        if problem is None and rows != marker.get("rows"):
            problem = f"{rows} rows, its commit marker says {marker.get('rows')}"
        if problem is None:
            # ParquetFile rather than pq.read_table, which imports pyarrow.dataset and pandas (0.25 s)
            image_ids = pq.ParquetFile(image_shard).read(columns=["image_id"]).column(0).cast(pa.string())
            if not ids.equals(image_ids):
                problem = f"its image_ids are not those of {image_shard} in the same order"
        if problem:
            raise UserError(f"{out}: damaged {self.what} shard ({problem}); {fix}")


def misaligned(where, detail: str, fix: str) -> None:
    """The one refusal of a derived shard whose rows are not its image shard's rows, in their order."""
    raise UserError(f"{where}: {detail}; the shards are not row-aligned; rerun '{fix}'")


def check_rows(ids: pa.Array, derived_ids: pa.Array, path: Path, command: str, rows: str) -> None:
    """At read time (a loader reading a unit of row groups): ``derived_ids``, read from the derived shard
    ``path``, must be ``ids``, its image shard's ids of the same rows."""
    if not derived_ids.equals(ids):
        misaligned(path, f"image_ids of rows {rows} differ from its image shard's", f"wdr-pipe {command} --rebuild")


__all__ = ["Derived", "DerivedShard", "SchemaCheck", "check_rows", "misaligned", "split_counts"]
