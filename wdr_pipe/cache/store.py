"""The store on disk: where each table lives, and the schema-version check.

Layout (see docs/store.md)::

    STORE/_store.json                            schema version
    STORE/label_map.parquet                      optional label names
    STORE/index/<split>.parquet                  image_id, urls, labels
    STORE/images/<split>/part-NNNNN.parquet      resized JPEGs (committed by .stats.json)
    STORE/images/<split>/part-NNNNN.failures.parquet
    STORE/images/<split>/part-NNNNN.stats.json   written last: the commit marker
    STORE/features/<key>/config.json
    STORE/features/<key>/<split>/part-NNNNN.parquet (+ .stats.json)
    STORE/stats/<split>/*.parquet
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Optional

from .. import __version__
from ..errors import UserError
from .atomic import write_text_atomic
from .schema import SCHEMA_VERSION

SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")


def shard_name(n: int) -> str:
    return f"part-{n:05d}"


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

    # -- paths -----------------------------------------------------------
    @property
    def label_map_path(self) -> Path:
        return self.root / "label_map.parquet"

    def index_path(self, split: str) -> Path:
        return self.root / "index" / f"{split}.parquet"

    def images_dir(self, split: str) -> Path:
        return self.root / "images" / split

    def features_root(self, key: str) -> Path:
        return self.root / "features" / key

    def features_dir(self, key: str, split: str) -> Path:
        return self.features_root(key) / split

    def stats_dir(self, split: str) -> Path:
        return self.root / "stats" / split

    # -- listings --------------------------------------------------------
    def splits(self) -> List[str]:
        """Splits that have an index, sorted."""
        d = self.root / "index"
        return sorted(p.stem for p in d.glob("*.parquet")) if d.is_dir() else []

    def image_shards(self, split: str, committed_only: bool = True) -> List[Path]:
        """Image shard files of ``split`` in shard order; by default only committed ones."""
        d = self.images_dir(split)
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.iterdir()):
            if SHARD_RE.match(p.name) and (not committed_only or stats_path(p).exists()):
                out.append(p)
        return out

    def feature_keys(self) -> List[str]:
        d = self.root / "features"
        return sorted(p.name for p in d.iterdir() if (p / "config.json").exists()) if d.is_dir() else []


def stats_path(shard: Path) -> Path:
    """``part-00001.parquet`` -> ``part-00001.stats.json`` (the commit marker)."""
    shard = Path(shard)
    return shard.with_name(shard.name[: -len(".parquet")] + ".stats.json")


def failures_path(shard: Path) -> Path:
    shard = Path(shard)
    return shard.with_name(shard.name[: -len(".parquet")] + ".failures.parquet")


def open_store(root, create: bool = False) -> Store:
    return Store(root, create=create)


def find_store(root) -> Optional[Store]:
    try:
        return Store(root)
    except UserError:
        return None
