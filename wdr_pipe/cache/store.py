"""The store on disk: where each table lives, which shards are committed, and the schema-version check.

This is the only code that builds store paths; everything else asks a ``Store``.

Layout (see docs/store.md)::

    STORE/_store.json                            schema version
    STORE/label_map.parquet                      optional label names
    STORE/index/<split>.parquet                  image_id, urls, labels (+ <split>.holdout.json)
    STORE/images/<split>/_fetch.json             the split's image settings and shard size
    STORE/images/<split>/part-NNNNN.parquet      resized JPEGs
    STORE/images/<split>/part-NNNNN.failures.parquet
    STORE/images/<split>/part-NNNNN.stats.json   written last: the commit marker (``commit.py``)
    STORE/images/<split>/_duplicates.parquet     content stored under several ids
    STORE/features/<key>/...                     a derived family (``derived.py``): config.json,
    STORE/embeddings/<key>/...                   <split>/part-NNNNN.parquet (+ its commit marker)
    STORE/embeddings/<key>/<split>/_search/{vectors.npy, ids.parquet, manifest.json}
    STORE/stats/<split>/*.parquet, config.json   the label statistics (config.json written last)
    STORE/_logs/<stage>-<time>-<pid>.log         the traceback of a task that failed unexpectedly
    <a stage's output folder>/.lock              while a stage writes there: its OS file lock (``writing``)
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..errors import UserError
from .commit import commit_path, shard_identity
from .derived import Derived
from .jsonfile import read_json, write_json
from .lock import FileLock
from .keys import canonical_json
from .schema import SCHEMA_VERSION

SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")
LABEL_STATS_TABLES = ("label_counts", "cooccurrence", "label_embeddings", "label_weights", "sample_weights")


_OPENED: Optional[List[Path]] = None  # the stores opened inside ``watching``, in order


@contextlib.contextmanager
def watching() -> Iterator[List[Path]]:
    """The roots of the stores opened inside the block (what ``doctor.damaged_file`` looks at after a failure)."""
    global _OPENED
    outer, _OPENED = _OPENED, []
    try:
        yield _OPENED
    finally:
        _OPENED = outer


def _note_opened(root: Path) -> None:
    if _OPENED is not None and root not in _OPENED:
        _OPENED.append(root)


class Store:
    """Paths into one store folder. Cheap to create; touches the disk only when asked."""

    def __init__(self, root, create: bool = False):
        self.root = Path(root)
        marker = self.root / "_store.json"
        if marker.exists():
            self.schema_version = self._check(marker)
            _note_opened(self.root)  # a failure while reading it gets its damaged file named (doctor.py)
        elif create:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(marker, {"schema_version": SCHEMA_VERSION, "created_by": f"wdr-pipe {__version__}"})
            self.schema_version = SCHEMA_VERSION
        else:
            raise UserError(
                f"{self.root}: not a wdr-pipe store (no _store.json); run 'wdr-pipe fetch INDEX --store {self.root}' first"
            )
        self.features = Derived(self, "features", "feature", "features", ("feature config", "feature configs"),
                                "pass one key of them")
        self.embeddings = Derived(self, "embeddings", "embedding", "embed", ("embeddings", "embedding keys"),
                                  "pass one with --embeddings", first=" --pretrained")

    def _check(self, marker: Path) -> int:
        fix = "restore it or start a new store"
        try:
            version = int(read_json(marker, fix)["schema_version"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{marker}: unreadable store marker ({e}); {fix}") from e
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{self.root}: store schema version {version}, this wdr-pipe {__version__} reads version "
                f"{SCHEMA_VERSION}; use a matching wdr-pipe or fetch into a new store"
            )
        return version

    # -- paths -----------------------------------------------------------
    @property
    def label_map_path(self) -> Path:
        return self.root / "label_map.parquet"

    def index_path(self, split: str) -> Path:
        return self.root / "index" / f"{split}.parquet"

    def holdout_path(self, split: str) -> Path:
        """``index/<split>.holdout.json``: how a held-out split was cut from another (``fetch --holdout``)."""
        return self.root / "index" / f"{split}.holdout.json"

    @property
    def images_root(self) -> Path:
        return self.root / "images"

    def images_dir(self, split: str) -> Path:
        return self.images_root / split

    def image_shard_path(self, split: str, number: int) -> Path:
        """``images/<split>/part-NNNNN.parquet``."""
        return self.images_dir(split) / f"{shard_name(number)}.parquet"

    def fetch_settings_path(self, split: str) -> Path:
        """The image settings and shard size a split was fetched with (fixed per split)."""
        return self.images_dir(split) / "_fetch.json"

    def duplicates_path(self, split: str) -> Path:
        return self.images_dir(split) / "_duplicates.parquet"

    @property
    def label_stats_root(self) -> Path:
        return self.root / "stats"

    def label_stats_dir(self, split: str) -> Path:
        return self.label_stats_root / split

    def label_stats_file(self, split: str, name: str) -> Path:
        """``stats/<split>/<name>.parquet`` (``name`` one of ``LABEL_STATS_TABLES``)."""
        return self.label_stats_dir(split) / f"{name}.parquet"

    def label_stats_config_path(self, split: str) -> Path:
        """``stats/<split>/config.json``, written last: the split's label statistics are complete."""
        return self.label_stats_dir(split) / "config.json"

    def label_stats_complete(self, split: str) -> bool:
        return self.label_stats_config_path(split).exists() and all(
            self.label_stats_file(split, n).exists() for n in LABEL_STATS_TABLES)

    def log_path(self, stage: str) -> Path:
        """A new ``_logs/<stage>-<time>-<pid>.log``: where a run puts the traceback of a task that failed."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return self.root / "_logs" / f"{stage}-{stamp}-{os.getpid()}.log"

    def search_dir(self, key: str, split: str) -> Path:
        """``embeddings/<key>/<split>/_search/``: the cached similarity index of a split."""
        return self.embeddings.dir(key, split) / "_search"

    def search_files(self, key: str, split: str) -> Dict[str, Path]:
        """``vectors`` (the index's normalised rows), ``ids`` (index row -> image) and ``manifest`` (written last:
        the commit)."""
        d = self.search_dir(key, split)
        return {"vectors": d / "vectors.npy", "ids": d / "ids.parquet", "manifest": d / "manifest.json"}

    @contextlib.contextmanager
    def writing(self, stage: str, folders: Sequence[Path]) -> Iterator[None]:
        """Around a stage that writes ``folders`` (a split's images, a feature key's split ...): each folder's
        OS file lock (``lock.py``, ``<folder>/.lock`` while held), all or none. A second run of the stage on
        the same outputs is one line naming the first one's pid (it would redo the same work); the kernel
        drops the locks of a process that dies, so a killed run never leaves them held."""
        fix = f"wait for it to finish, then run 'wdr-pipe {stage}' again: it reuses every shard the first one wrote"
        folders = sorted(set(map(Path, folders)))
        new = [f for f in folders if not f.exists()]
        try:
            with contextlib.ExitStack() as stack:
                for folder in folders:
                    stack.enter_context(FileLock(folder / ".lock", f"wdr-pipe {stage}", fix))
                yield
        finally:
            for folder in new:  # made for the lock alone: left as it was
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    # -- the split's fetch settings (images/<split>/_fetch.json) -------------
    def fetch_settings(self, split: str) -> Optional[dict]:
        """``{"key", "config", "shard_size"}``: the image settings and shard size ``split`` was fetched
        with; ``None`` before its first fetch, a ``UserError`` naming the file when it is unreadable."""
        return read_json(self.fetch_settings_path(split), "delete it and fetch the split again", missing_ok=True)

    def write_fetch_settings(self, split: str, key: str, config: dict, shard_size: int) -> None:
        write_json(self.fetch_settings_path(split), {"key": key, "config": config, "shard_size": shard_size})

    # -- listings --------------------------------------------------------
    def splits(self) -> List[str]:
        """Splits that have an index, sorted."""
        d = self.root / "index"
        return sorted(p.stem for p in d.glob("*.parquet")) if d.is_dir() else []

    def image_splits(self) -> List[str]:
        """Splits that have at least one committed image shard, sorted."""
        d = self.images_root
        return sorted(p.name for p in d.iterdir() if p.is_dir() and self.image_shards(p.name)) if d.is_dir() else []

    def label_stats_splits(self) -> List[str]:
        """Splits with a ``stats/<split>/`` folder (complete or not), sorted."""
        d = self.label_stats_root
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def image_shards(self, split: str, committed_only: bool = True) -> List[Path]:
        """Image shard files of ``split`` in shard order; by default only committed ones."""
        return shard_files(self.images_dir(split), committed_only)

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

    def fingerprint(self, split: str, *extra) -> str:
        """One digest of the committed image shards of ``split`` (and of ``extra`` inputs):
        what a stage that reads those images is keyed on."""
        parts = [shard_identity(p) for p in self.image_shards(split)]
        return hashlib.sha256(canonical_json([parts, *extra]).encode()).hexdigest()[:16]


def shard_name(n: int) -> str:
    return f"part-{n:05d}"


def shard_files(folder: Path, committed_only: bool = True) -> List[Path]:
    """The ``part-NNNNN.parquet`` files of ``folder`` in shard order (by default only committed ones)."""
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir())
            if SHARD_RE.match(p.name) and (not committed_only or commit_path(p).exists())]


def failures_path(shard) -> Path:
    """``part-00001.parquet`` -> ``part-00001.failures.parquet``: the image shard's failed rows."""
    shard = Path(shard)
    return shard.with_name(shard.name[: -len(".parquet")] + ".failures.parquet")


def read_columns(paths: List[Path], columns: List[str]) -> pa.Table:
    """``columns`` of several shards, concatenated in order."""
    tables = [pq.read_table(p, columns=columns) for p in paths]
    # permissive: a shard written by another version may differ in nullability flags only
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({c: [] for c in columns})


def is_store(folder) -> bool:
    """``folder`` is a store's root (it has the store marker), whatever its version."""
    return (Path(folder) / "_store.json").is_file()


def open_store(root, create: bool = False) -> Store:
    return Store(root, create=create)


StoreLike = Union[Store, str, Path]


def as_store(store: StoreLike) -> Store:
    """A ``Store`` for a ``Store`` or a path."""
    return store if isinstance(store, Store) else Store(store)
