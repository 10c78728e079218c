"""The store on disk: where each table lives, which shards are committed, and the schema-version check.

This is the only code that builds store paths; everything else asks a ``Store``.

Layout (see docs/store.md)::

    STORE/_store.json                            schema version
    STORE/label_map.parquet                      optional label names
    STORE/index/<split>.parquet                  image_id, urls, labels
    STORE/images/<split>/part-NNNNN.parquet      resized JPEGs (committed by .stats.json, the commit marker)
    STORE/images/<split>/part-NNNNN.failures.parquet
    STORE/images/<split>/part-NNNNN.stats.json   written last: the commit marker
    STORE/features/<key>/config.json
    STORE/features/<key>/<split>/part-NNNNN.parquet (+ .stats.json)
    STORE/stats/<split>/*.parquet
    STORE/embeddings/<key>/config.json
    STORE/embeddings/<key>/<split>/part-NNNNN.parquet (+ .stats.json)
    STORE/embeddings/<key>/<split>/_search/{index.faiss, ids.parquet, manifest.json}
    STORE/_logs/<stage>-<time>-<pid>.log         the traceback of a task that failed unexpectedly
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..errors import UserError
from .atomic import write_text_atomic
from .keys import canonical_json
from .schema import SCHEMA_VERSION

log = logging.getLogger("wdr_pipe")

SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")
STATS_TABLES = ("label_counts", "cooccurrence", "label_embeddings", "label_weights", "sample_weights")


class Store:
    """Paths into one store folder. Cheap to create; touches the disk only when asked."""

    def __init__(self, root, create: bool = False):
        self.root = Path(root)
        marker = self.root / "_store.json"
        if marker.exists():
            self._check(marker)
        elif create:
            self.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(
                marker,
                json.dumps({"schema_version": SCHEMA_VERSION, "created_by": f"wdr-pipe {__version__}"}, indent=2)
                + "\n",
            )
        else:
            raise UserError(
                f"{self.root}: not a wdr-pipe store (no _store.json); run 'wdr-pipe fetch INDEX --store {self.root}' first"
            )

    def _check(self, marker: Path) -> None:
        try:
            doc = json.loads(marker.read_text(encoding="utf-8"))
            version = int(doc["schema_version"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{marker}: unreadable store marker ({e}); restore it or start a new store") from e
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{self.root}: store schema version {version}, this wdr-pipe {__version__} reads version "
                f"{SCHEMA_VERSION}; use a matching wdr-pipe or fetch into a new store"
            )

    @property
    def schema_version(self) -> int:
        return int(json.loads((self.root / "_store.json").read_text(encoding="utf-8"))["schema_version"])

    # -- paths -----------------------------------------------------------
    @property
    def label_map_path(self) -> Path:
        return self.root / "label_map.parquet"

    def index_path(self, split: str) -> Path:
        return self.root / "index" / f"{split}.parquet"

    @property
    def images_root(self) -> Path:
        return self.root / "images"

    def holdout_path(self, split: str) -> Path:
        """``index/<split>.holdout.json``: how a held-out split was cut from another (``fetch --holdout``)."""
        return self.root / "index" / f"{split}.holdout.json"

    def images_dir(self, split: str) -> Path:
        return self.images_root / split

    def features_root(self, key: str) -> Path:
        return self.root / "features" / key

    def features_dir(self, key: str, split: str) -> Path:
        return self.features_root(key) / split

    def feature_config_path(self, key: str) -> Path:
        return self.features_root(key) / "config.json"

    def fetch_settings_path(self, split: str) -> Path:
        """The image settings and shard size a split was fetched with (fixed per split)."""
        return self.images_dir(split) / "_fetch.json"

    def duplicates_path(self, split: str) -> Path:
        return self.images_dir(split) / "_duplicates.parquet"

    @property
    def stats_root(self) -> Path:
        return self.root / "stats"

    def stats_dir(self, split: str) -> Path:
        return self.stats_root / split

    def stats_file(self, split: str, name: str) -> Path:
        """``stats/<split>/<name>.parquet`` (``name`` one of ``STATS_TABLES``)."""
        return self.stats_dir(split) / f"{name}.parquet"

    def stats_config_path(self, split: str) -> Path:
        """``stats/<split>/config.json``, written last: the split's label statistics are complete."""
        return self.stats_dir(split) / "config.json"

    def stats_complete(self, split: str) -> bool:
        return self.stats_config_path(split).exists() and all(
            self.stats_file(split, n).exists() for n in STATS_TABLES)

    def log_path(self, stage: str) -> Path:
        """A new ``_logs/<stage>-<time>-<pid>.log``: where a run puts the traceback of a task that failed."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return self.root / "_logs" / f"{stage}-{stamp}-{os.getpid()}.log"

    # -- listings --------------------------------------------------------
    def splits(self) -> List[str]:
        """Splits that have an index, sorted."""
        d = self.root / "index"
        return sorted(p.stem for p in d.glob("*.parquet")) if d.is_dir() else []

    def image_splits(self) -> List[str]:
        """Splits that have at least one committed image shard, sorted."""
        d = self.images_root
        return sorted(p.name for p in d.iterdir() if p.is_dir() and self.image_shards(p.name)) if d.is_dir() else []

    def stats_splits(self) -> List[str]:
        """Splits with a ``stats/<split>/`` folder (complete or not), sorted."""
        d = self.stats_root
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def image_shards(self, split: str, committed_only: bool = True) -> List[Path]:
        """Image shard files of ``split`` in shard order; by default only committed ones."""
        d = self.images_dir(split)
        if not d.is_dir():
            return []
        return [p for p in sorted(d.iterdir())
                if SHARD_RE.match(p.name) and (not committed_only or commit_path(p).exists())]

    def input_splits(self, splits=None) -> List[str]:
        """``splits`` (default: every split with committed image shards), each checked to have some:
        what a stage that reads the images works on; a ``UserError`` naming the fix when there are none."""
        if not splits:
            splits = self.image_splits()
            if not splits:
                raise UserError(f"{self.root}: no image shards under images/; "
                                f"run 'wdr-pipe fetch INDEX --store {self.root}' first")
        for split in splits:
            self.require_images(split)
        return list(splits)

    def require_images(self, split: str) -> List[Path]:
        """The committed image shards of ``split``; a ``UserError`` naming the fix when there are none."""
        shards = self.image_shards(split)
        if not shards:
            have = self.image_splits()
            raise UserError(f"{self.images_dir(split)}: no committed image shards for split {split!r} "
                            f"(splits with images: {', '.join(have) or 'none'}); "
                            f"run 'wdr-pipe fetch INDEX --store {self.root}' for it first")
        return shards

    def feature_keys(self) -> List[str]:
        d = self.root / "features"
        return sorted(p.name for p in d.iterdir() if (p / "config.json").exists()) if d.is_dir() else []

    def resolve_feature_key(self, key: Optional[str] = None) -> str:
        """``key``, checked; ``None`` takes the store's only feature config."""
        keys = self.feature_keys()
        if key is None:
            if len(keys) == 1:
                return keys[0]
            if not keys:
                raise UserError(f"{self.root}: no image features yet; run 'wdr-pipe features --store {self.root}'")
            raise UserError(f"{self.root}: several feature configs ({', '.join(keys)}); pass one key of them")
        if key not in keys:
            raise UserError(f"{self.root}: no feature config {key!r}; the store has: {', '.join(keys) or 'none'}")
        return key

    def feature_shard(self, key: str, split: str, image_shard: Path) -> Path:
        """The committed feature shard of ``image_shard``, checked to have as many rows (footers only).
        A ``UserError`` naming the shard and the fix when it is missing or not row-aligned."""
        fix = f"wdr-pipe features --store {self.root} --split {split}"
        return _aligned(self.features_dir(key, split) / Path(image_shard).name, image_shard, "feature", fix)

    def feature_shards(self, key: str, split: str, complete: bool = True) -> List[Tuple[Path, Path]]:
        """``(image shard, feature shard)`` pairs of ``split``, checked to be row-aligned.

        ``complete``: every committed image shard must have its feature shard (what
        training needs); otherwise image shards whose features are not committed yet are
        left out (what a reader of a store still being computed wants), and only none at all is an error.
        """
        images = self.require_images(split)
        if not complete:
            images = [p for p in images if _current(read_commit(self.features_dir(key, split) / p.name), p)]
            if not images:
                raise UserError(f"{self.features_dir(key, split)}: no committed feature shards for split "
                                f"{split!r}; run 'wdr-pipe features --store {self.root} --split {split}'")
        return [(p, self.feature_shard(key, split, p)) for p in images]

    # -- embeddings (wdr-pipe embed) -------------------------------------
    def embeddings_root(self, key: str) -> Path:
        return self.root / "embeddings" / key

    def embeddings_dir(self, key: str, split: str) -> Path:
        return self.embeddings_root(key) / split

    def embedding_config_path(self, key: str) -> Path:
        return self.embeddings_root(key) / "config.json"

    def embedding_keys(self) -> List[str]:
        d = self.root / "embeddings"
        return sorted(p.name for p in d.iterdir() if (p / "config.json").exists()) if d.is_dir() else []

    def resolve_embedding_key(self, key: Optional[str] = None) -> str:
        """``key``, checked; ``None`` takes the store's only embedding config."""
        keys = self.embedding_keys()
        if key is None and len(keys) == 1:
            return keys[0]
        if key is None or key not in keys:
            what = (f"no embeddings {key!r}" if key is not None else
                    f"several embedding keys ({', '.join(keys)}); pass one with --embeddings" if keys else
                    "no embeddings yet")
            fix = f"; the store has: {', '.join(keys)}" if keys and key is not None else \
                ("" if keys else f"; run 'wdr-pipe embed --store {self.root} --pretrained' first")
            raise UserError(f"{self.root}: {what}{fix}")
        return key

    def embedding_shard(self, key: str, split: str, image_shard: Path) -> Path:
        """The committed embedding shard of ``image_shard``, checked to have as many rows (footers only)."""
        fix = f"wdr-pipe embed --store {self.root} --split {split}"
        return _aligned(self.embeddings_dir(key, split) / Path(image_shard).name, image_shard, "embedding", fix)

    def embedding_shards(self, key: str, split: str) -> List[Tuple[Path, Path]]:
        """``(image shard, embedding shard)`` pairs of every committed image shard of ``split``."""
        return [(p, self.embedding_shard(key, split, p)) for p in self.require_images(split)]

    def search_dir(self, key: str, split: str) -> Path:
        """``embeddings/<key>/<split>/_search/``: the cached similarity index of a split."""
        return self.embeddings_dir(key, split) / "_search"

    def search_files(self, key: str, split: str) -> Dict[str, Path]:
        """``index`` (faiss), ``ids`` (index row -> image) and ``manifest`` (written last: the commit)."""
        d = self.search_dir(key, split)
        return {"index": d / "index.faiss", "ids": d / "ids.parquet", "manifest": d / "manifest.json"}

    def fingerprint(self, split: str, *extra) -> str:
        """One digest of the committed image shards of ``split`` (and of ``extra`` inputs):
        what a stage that reads those images is keyed on."""
        parts = [shard_identity(p) for p in self.image_shards(split)]
        return hashlib.sha256(canonical_json([parts, *extra]).encode()).hexdigest()[:16]


def _aligned(path: Path, image_shard: Path, what: str, fix: str) -> Path:
    """``path``, a derived shard of ``image_shard``: committed, computed from the image shard as it is
    now, and with as many rows (footers only); a ``UserError`` naming ``fix`` otherwise."""
    marker = read_commit(path)
    if marker is None:
        raise UserError(f"{path}: no committed {what} shard for {image_shard}; run '{fix}'")
    if "source" in marker and marker["source"] != shard_identity(image_shard):
        raise UserError(f"{path}: computed from an earlier version of {image_shard} (fetched again since); "
                        f"run '{fix}'")
    rows, image_rows = pq.read_metadata(path).num_rows, pq.read_metadata(image_shard).num_rows
    if rows != image_rows:
        raise UserError(f"{path}: {rows} rows but its image shard has {image_rows}; the shards are not "
                        f"row-aligned; rerun '{fix} --rebuild'")
    return path


def _current(marker: Optional[dict], image_shard: Path) -> bool:
    """A derived shard's commit marker exists and names the image shard as it is now."""
    return marker is not None and ("source" not in marker or marker["source"] == shard_identity(image_shard))


def shard_name(n: int) -> str:
    return f"part-{n:05d}"


def commit_path(shard: Path) -> Path:
    """``part-00001.parquet`` -> ``part-00001.stats.json``, the shard's commit marker (written last)."""
    shard = Path(shard)
    return shard.with_name(shard.name[: -len(".parquet")] + ".stats.json")


def failures_path(shard: Path) -> Path:
    shard = Path(shard)
    return shard.with_name(shard.name[: -len(".parquet")] + ".failures.parquet")


def read_commit(shard: Path) -> Optional[dict]:
    """The commit marker of ``shard`` as a dict; ``None`` when there is none or it is unreadable
    (then the shard counts as not done and is redone)."""
    marker = commit_path(shard)
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s: unreadable commit marker; the shard will be redone", marker)
        return None


def shard_identity(image_shard: Path) -> Dict[str, object]:
    """What a derived shard was computed from: the image shard's name, size and commit marker digest."""
    image_shard = Path(image_shard)
    digest = hashlib.sha256(commit_path(image_shard).read_bytes()).hexdigest()
    return {"shard": image_shard.name, "bytes": image_shard.stat().st_size, "stats_sha256": digest}


def read_columns(paths: List[Path], columns: List[str]) -> pa.Table:
    """``columns`` of several shards, concatenated in order."""
    tables = [pq.read_table(p, columns=columns) for p in paths]
    # permissive: a shard written by another version may differ in nullability flags only
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({c: [] for c in columns})


def open_store(root, create: bool = False) -> Store:
    return Store(root, create=create)


StoreLike = Union[Store, str, Path]


def as_store(store: StoreLike) -> Store:
    """A ``Store`` for a ``Store`` or a path."""
    return store if isinstance(store, Store) else Store(store)
