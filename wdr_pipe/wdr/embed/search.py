"""Similar-image search over stored embeddings: the VGG-16 paper's use case, on faiss.

``similar(store, query, key=KEY, split="train", k=10)`` returns the ``k``
stored images of ``split`` nearest to ``query`` by cosine similarity: their
image ids, URLs, scores and (``with_labels``) labels, with names where the
store has a label map. ``query`` is an image id of the store (its stored
vector; the image itself is left out of its own results) or an image file,
embedded on the fly by the backbone, weights and data config of ``KEY``
(``embed.load_backbone``, which refuses weights that changed since).

The index is ``faiss.IndexFlatIP`` (exact, exhaustive inner product) over the
L2-normalised float32 vectors, so a score is the cosine similarity. Its rows are
built once per key and split (``build_index``) and cached under
``embeddings/<key>/<split>/_search/``: ``vectors.npy`` (the normalised (N, D)
float32 matrix), ``ids.parquet`` (index row -> image_id, shard, row) and
``manifest.json`` last, which names the embedding shards it was built from
(their size and commit-marker digest); any change of those rebuilds it, and so
does a cache file that does not read back as what the manifest says. Rows whose
image failed to decode are left out. A faiss index file is never read (its
format is C++ deserialisation, not data we check): the index is made in memory
from the vectors, a copy as fast as reading one. faiss-cpu is imported on first use.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...cache import Store, as_store, fixed_matrix, shard_identity, write_result
from ...cache.atomic import atomic_path, write_parquet_atomic
from ...cache.jsonfile import read_json, write_json
from ...cache.schema import SEARCH_IDS
from ...errors import UserError
from ...result import StageResult
from ..checks import K, check_device

log = logging.getLogger("wdr_pipe")

INDEX_VERSION = 2  # 2: vectors.npy instead of a faiss index file
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UserError("similar-image search needs faiss; run `pip install faiss-cpu`") from None
    return faiss


def _read_vectors(path: Path) -> Tuple[pa.Array, np.ndarray, np.ndarray]:
    """(image_ids, float32 vectors, ok mask) of one embedding shard."""
    t = pq.read_table(path, columns=["image_id", "embedding"])
    col = t.column("embedding")
    x = np.empty((t.num_rows, col.type.list_size), np.float32)
    fixed_matrix(col, x, 0)
    return t.column("image_id").combine_chunks().cast(pa.string()), x, col.is_valid().to_numpy(zero_copy_only=False)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero): inner product = cosine similarity."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.where(n > 0, n, 1.0), np.float32)


def build_index(store, key: Optional[str] = None, split: str = "train", rebuild: bool = False) -> StageResult:
    """The cached search index of ``key``'s ``split``: reused while its embedding shards are unchanged."""
    store = as_store(store)
    key = store.embeddings.resolve_key(key)
    t0 = time.monotonic()
    pairs = store.embeddings.shards(key, split)
    source = [shard_identity(e) for _, e in pairs]
    files = store.search_files(key, split)
    folder = store.search_dir(key, split)
    if not rebuild and files["manifest"].exists():
        doc = read_json(files["manifest"])
        if doc.get("source") == source and doc.get("version") == INDEX_VERSION:
            return StageResult("search-index", key, str(folder), time.monotonic() - t0, reused=1,
                               counts={"ok": doc["rows"]}, details={"split": split, "dim": doc["dim"]})
    files["manifest"].unlink(missing_ok=True)  # uncommit while the files change
    faiss = _faiss()
    dim = pq.read_schema(pairs[0][1]).field("embedding").type.list_size
    x = np.empty((sum(pq.read_metadata(e).num_rows for _, e in pairs), dim), np.float32)  # one copy, filled
    ids, shard, rows, n = [], [], [], 0
    for _, path in pairs:
        image_ids, vectors, ok = _read_vectors(path)
        keep = np.flatnonzero(ok)
        x[n:n + len(keep)] = vectors[keep]
        n += len(keep)
        ids.append(image_ids.take(pa.array(keep)))
        shard += [path.name] * len(keep)
        rows.append(keep.astype(np.int32))
    x = x[:n]
    if not n:
        raise UserError(f"{store.embeddings.dir(key, split)}: no image of split {split!r} has an embedding "
                        "(every one failed to decode); nothing to search")
    faiss.normalize_L2(x)  # in place; all-zero rows stay zero
    with atomic_path(files["vectors"]) as tmp, open(tmp, "wb") as f:
        np.save(f, x, allow_pickle=False)
    write_parquet_atomic(pa.table([pa.concat_arrays(ids), pa.array(shard, pa.string()),
                                   pa.array(np.concatenate(rows))], schema=SEARCH_IDS), files["ids"])
    doc = {"version": INDEX_VERSION, "key": key, "split": split, "rows": int(len(x)), "dim": int(x.shape[1]),
           "metric": "cosine (IndexFlatIP over L2-normalised vectors)", "source": source}
    write_json(files["manifest"], doc)
    result = StageResult("search-index", key, str(folder), time.monotonic() - t0, ran=1, counts={"ok": len(x)},
                         details={"split": split, "dim": int(x.shape[1])})
    write_result(folder, result)
    log.info("search index of %s/%s: %d vectors of %d dims in %.1f s", key, split, len(x), x.shape[1], result.seconds)
    return result


class SearchIndex:
    """A loaded index: ``search(vectors, k)`` -> (scores, index rows); ``row_of(image_id)``; ``vector(row)``."""

    def __init__(self, store, key: Optional[str] = None, split: str = "train"):
        self.store = as_store(store)
        self.key = self.store.embeddings.resolve_key(key)
        self.split = split
        self.built = build_index(self.store, self.key, split)
        t = time.monotonic()
        try:
            self.index, self.ids = self._load()
        except (UserError, OSError, ValueError, pa.ArrowException) as e:  # a damaged cache: built again
            log.warning("the search index of %s/%s is unreadable (%s); building it again", self.key, split, e)
            self.built = build_index(self.store, self.key, split, rebuild=True)
            self.index, self.ids = self._load()
        self.load_seconds = time.monotonic() - t

    def _load(self):
        """The faiss index made from the cached vectors (read as a plain float32 array, never unpickled), and
        the ids table; a ``UserError`` when they are not what the manifest says."""
        files = self.store.search_files(self.key, self.split)
        doc = read_json(files["manifest"])
        x = np.load(files["vectors"], mmap_mode="r", allow_pickle=False)
        ids = pq.read_table(files["ids"])
        if x.dtype != np.float32 or x.shape != (doc["rows"], doc["dim"]) or ids.num_rows != doc["rows"]:
            raise UserError(f"{files['vectors']}: {x.dtype} {x.shape} and {ids.num_rows} ids, the manifest says "
                            f"float32 ({doc['rows']}, {doc['dim']})")
        index = _faiss().IndexFlatIP(doc["dim"])
        index.add(np.ascontiguousarray(x))
        return index, ids

    def __len__(self) -> int:
        return self.index.ntotal

    def row_of(self, image_id: str) -> Optional[int]:
        i = pc.index(self.ids.column("image_id"), image_id).as_py()
        return None if i < 0 else int(i)

    def vector(self, row: int) -> np.ndarray:
        return self.index.reconstruct(int(row))

    def search(self, vectors: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.index.search(normalise(np.atleast_2d(vectors)), int(min(k, len(self))))


@dataclasses.dataclass
class Neighbours:
    """What ``similar`` found: the query, its ``k`` nearest images (rank order) and timings."""

    key: str
    split: str
    query: Dict[str, Any]
    results: List[Dict[str, Any]]
    seconds: Dict[str, float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> List[str]:
        q = self.query
        head = f"{len(self.results)} images of {self.split} nearest to " + (
            f"image {q['image_id']} ({q['split']})" if "image_id" in q else f"file {q['file']}") + \
            f" by cosine similarity (embeddings {self.key}):"
        out = [head]
        for r in self.results:
            labels = ""
            if "labels" in r:
                labels = "  [" + ", ".join(r.get("label_names") or [str(x) for x in r["labels"] or []]) + "]"
            out.append(f"{r['rank']:>3}. {r['score']:.4f}  {r['image_id']}  {r['url']}{labels}")
        return out


def _label_names(store: Store) -> Optional[Dict[int, str]]:
    if not store.label_map_path.exists():
        return None
    t = pq.read_table(store.label_map_path, columns=["labelId", "labelName"])
    return {int(i): (n if n is not None else str(i)) for i, n in zip(*(c.to_pylist() for c in t.columns))}


def _details(store: Store, split: str, where: List[Tuple[str, int]], with_labels: bool) -> List[Dict[str, Any]]:
    """url (and labels) of image shard rows ``(shard name, row)`` of ``split``, in order."""
    by_shard: Dict[str, List[int]] = {}
    for name, row in where:
        by_shard.setdefault(name, []).append(row)
    got: Dict[Tuple[str, int], Dict[str, Any]] = {}
    columns = ["url", "labels"] if with_labels else ["url"]
    for name, rows in by_shard.items():
        t = pq.ParquetFile(store.images_dir(split) / name).read(columns=columns).take(pa.array(rows))
        for row, rec in zip(rows, t.to_pylist()):
            got[(name, row)] = rec
    return [got[w] for w in where]


def _find_elsewhere(store: Store, key: str, split: str, image_id: str) -> Optional[Tuple[str, np.ndarray]]:
    """(split, vector) of ``image_id`` in another split's embeddings of ``key``."""
    for other in store.image_splits():
        if other == split:
            continue
        for image_shard in store.image_shards(other):
            path = store.embeddings.dir(key, other) / image_shard.name
            if not path.exists():
                continue
            i = pc.index(pq.read_table(path, columns=["image_id"]).column(0), image_id).as_py()
            if i >= 0:
                ids, x, ok = _read_vectors(path)
                if not ok[i]:
                    raise UserError(f"image {image_id} ({other}) has no embedding: it failed to decode "
                                    f"({path}); query another image")
                return other, x[i]
    return None


def read_query(store: Store, split: str, path: Union[str, Path]) -> bytes:
    """An image file's bytes, checked to be an image of at most the split's ``max_pixels`` (its fetch
    settings) from its header alone: before any index is built or model loaded."""
    from ...imaging import ADVICE, ImageRejected, check_image
    from ...pipeline.configs import FetchConfig

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the image file ({e.strerror}); pass a readable image file") from None
    fetched = store.fetch_settings(split)
    max_pixels = int(fetched["config"].get("max_pixels", FetchConfig().max_pixels)) if fetched else \
        FetchConfig().max_pixels
    try:
        check_image(data, max_pixels)
    except ImageRejected as e:
        raise UserError(f"{path}: {e} ({e.status}); {ADVICE[e.status]}") from None
    return data


def embed_file(store: Store, key: str, path: Union[str, Path], device: str = "auto", split: str = "train",
               data: Optional[bytes] = None) -> np.ndarray:
    """The vector of an image file, by the backbone, weights and data config of embeddings ``key``."""
    from concurrent.futures import ThreadPoolExecutor

    from ..dist import pick_device
    from .embedder import Embedder, decode_all
    from .stage import EmbedConfig, load_backbone

    path = Path(path)
    data = read_query(store, split, path) if data is None else data
    doc = read_json(store.embeddings.config_path(key))
    fields = {f.name for f in dataclasses.fields(EmbedConfig)}
    cfg = EmbedConfig(**{k: v for k, v in doc["config"].items() if k in fields})
    if cfg.key != key:
        raise UserError(f"{store.embeddings.config_path(key)}: its settings hash to {cfg.key}, not {key}; "
                        "the file was edited: embed again with 'wdr-pipe embed'")
    embedder = Embedder(load_backbone(cfg, doc.get("source", {})), cfg.data_config, pick_device(device))
    with ThreadPoolExecutor(1) as pool:
        images, errors = decode_all(embedder, pool, [data])
    if errors[0] is not None:
        raise UserError(f"{path}: a corrupt or truncated image (it did not decode); pass another photo")
    return embedder.vectors(images)[0]


def similar(store, query: Union[str, Path], *, key: Optional[str] = None, split: str = "train", k: int = 10,
            with_labels: bool = False, device: str = "auto", index: Optional[SearchIndex] = None) -> Neighbours:
    """The ``k`` images of ``split`` nearest to ``query`` (an image id of the store, or an image file)."""
    store = as_store(store)
    K.check("similar", k, "k")
    check_device(device)
    key = store.embeddings.resolve_key(key)
    if not store.image_shards(split):
        store.require_images(split)
    text = str(query)
    data = read_query(store, split, text) if os.path.isfile(text) else None  # checked before any model or index
    index = index if index is not None else SearchIndex(store, key, split)
    t = time.monotonic()
    q: Dict[str, Any] = {}
    own_row = None
    if data is not None:
        vec = embed_file(store, key, text, device, split, data)
        q = {"file": text}
    else:
        own_row = index.row_of(text)
        if own_row is not None:
            vec, q = index.vector(own_row), {"image_id": text, "split": split}
        else:
            found = _find_elsewhere(store, key, split, text)
            if found is None:
                if os.sep in text or text.lower().endswith(IMAGE_SUFFIXES):
                    raise UserError(f"{text}: no such image file; pass an image file or an image id of the store")
                raise UserError(f"image id {text!r} is not in the store {store.root} (searched the embeddings "
                                f"{key} of {', '.join(store.image_splits())}); pass an image id of the store or "
                                "an image file")
            vec, q = found[1], {"image_id": text, "split": found[0]}
    embed_seconds = time.monotonic() - t
    t = time.monotonic()
    scores, rows = index.search(vec, k + (own_row is not None))
    search_seconds = time.monotonic() - t
    hits = [(float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0 and r != own_row][:k]
    ids = index.ids
    where = [(ids.column("shard")[r].as_py(), ids.column("row")[r].as_py()) for _, r in hits]
    extra = _details(store, split, where, with_labels)
    names = _label_names(store) if with_labels else None
    results = []
    for rank, ((score, r), more) in enumerate(zip(hits, extra), start=1):
        rec = {"rank": rank, "image_id": ids.column("image_id")[r].as_py(), "score": round(score, 6), **more}
        if names is not None:
            rec["label_names"] = [names.get(x, str(x)) for x in rec.get("labels") or []]
        results.append(rec)
    return Neighbours(key, split, q, results, {"load_index": round(index.load_seconds, 4),
                                               "embed_query": round(embed_seconds, 4),
                                               "search": round(search_seconds, 6)})


__all__ = ["Neighbours", "SearchIndex", "build_index", "embed_file", "normalise", "read_query", "similar"]
