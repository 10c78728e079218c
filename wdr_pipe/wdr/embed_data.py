"""Training from cached embeddings: a loader sibling that decodes no image, and the trainer's hook.

``make_embedding_loader(store, split, embedding_key=KEY, ...)`` streams batches
of dicts like ``data.make_loader``'s, with ``embedding`` in place of ``image``:

- ``embedding``: float32 (B, D), the stored pooled vectors of
  ``embeddings/<KEY>/<split>``;
- ``wide``: float32 (B, D1 + D2) HOG and colour histogram (with a ``feature_key``);
- ``labels``: float32 (B, L) multi-hot, from the ``labels`` column of the image
  shards (only that column and ``image_id`` are read: no JPEG bytes);
- ``weight``, ``image_id``: as the image loader's.

The order is ``sampling.py``'s, unchanged: the same units shuffle, weighted
sampling, equal shares per rank and whole batches per worker, the same local
shuffle, all drawn from ``(seed, epoch, rank, worker)``; only the units are cut
where the image, embedding and feature shards all have a row-group boundary,
and a row is usable when neither its embedding nor its features failed. The
state dict (epoch, per-worker position) resumes exactly, as ``data.Loader``'s,
and names the embedding key, so a run that streamed images cannot resume on
embeddings or the other way round.

``training_embeddings(store, cfg, model, dcfg, device)``: what ``train --deep
fixed`` calls. It finds (or computes) the embeddings whose key matches the run's
backbone, weights, data config and dtype, and returns their key.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset

from ..cache import Store, failures_path, fixed_matrix, label_space, multi_hot, open_store
from ..cache.keys import read_json
from ..errors import UserError
from . import sampling
from .data import Loader, SplitOrder, _rank_world, make_loader
from .transforms import DataConfig

log = logging.getLogger("wdr_pipe")


@dataclasses.dataclass
class EmbeddingPlan(sampling.Plan):
    """``sampling.Plan`` plus the embedding shards: their folder and each unit's row groups in them."""

    embeddings_dir: Optional[Path] = None
    embedding_groups: List[Tuple[int, ...]] = dataclasses.field(default_factory=list)


def _groups(bounds: np.ndarray, a: int, b: int) -> Tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero((bounds[:-1] >= a) & (bounds[:-1] < b)))


def build_plan(store: Store, split: str, embedding_key: str, feature_key: Optional[str] = None,
               weighted: bool = False) -> EmbeddingPlan:
    """The units and usable rows of ``split`` over image, embedding (and feature) shards; footers and small
    columns only."""
    shards = store.require_images(split)
    skipped = {"download": 0, "embedding": 0, "features": 0}
    units, egroups, offsets, shard_valid = [], [], [], []
    for shard in shards:
        if failures_path(shard).exists():
            skipped["download"] += pq.read_metadata(failures_path(shard)).num_rows
        img_b = sampling._group_bounds(pq.read_metadata(shard))
        epath = store.embedding_shard(embedding_key, split, shard)
        emb_b = sampling._group_bounds(pq.read_metadata(epath))
        valid = pc.is_null(pq.read_table(epath, columns=["error"]).column(0)).to_numpy(zero_copy_only=False)
        skipped["embedding"] += int((~valid).sum())
        cuts, feat_b = np.intersect1d(img_b, emb_b), None
        if feature_key is not None:
            fpath = store.feature_shard(feature_key, split, shard)
            feat_b = sampling._group_bounds(pq.read_metadata(fpath))
            ok = pc.is_null(pq.read_table(fpath, columns=["error"]).column(0)).to_numpy(zero_copy_only=False)
            skipped["features"] += int((valid & ~ok).sum())
            valid, cuts = valid & ok, np.intersect1d(cuts, feat_b)
        shard_valid.append(valid)
        for a, b in zip(cuts[:-1], cuts[1:]):
            units.append(sampling.Unit(shard.name, int(a), int(b - a), _groups(img_b, a, b),
                                       _groups(feat_b, a, b) if feat_b is not None else ()))
            egroups.append(_groups(emb_b, a, b))
            offsets.append(np.flatnonzero(valid[a:b]).astype(np.int32))
    unit_start = np.concatenate([[0], np.cumsum([len(o) for o in offsets])]).astype(np.int64)
    if not unit_start[-1]:
        raise UserError(f"{store.embeddings_dir(embedding_key, split)}: no usable rows (every image, embedding "
                        "or feature row failed)")
    weights = sampling._aligned_weights(store, split, shards, weighted)
    weight = np.ones(int(unit_start[-1]), np.float32) if weights is None else weights[np.concatenate(shard_valid)]
    return EmbeddingPlan(store.images_dir(split), store.features_dir(feature_key, split) if feature_key else None,
                         units, unit_start, np.concatenate(offsets), weight, skipped,
                         store.embeddings_dir(embedding_key, split), egroups)


class _Chunk:
    def __init__(self, ids: List[str], labels: np.ndarray, emb: np.ndarray, wide: Optional[np.ndarray]):
        self.ids, self.labels, self.emb, self.wide = ids, labels, emb, wide


class _Reader:
    """Loads units on demand, keeps the last few (LRU): memory is bounded as in ``data._UnitReader``."""

    def __init__(self, plan: EmbeddingPlan, space: np.ndarray, keep: int):
        self.plan, self.space, self.keep = plan, space, keep
        self.chunks: "collections.OrderedDict[int, _Chunk]" = collections.OrderedDict()
        self.files: "collections.OrderedDict[Path, pq.ParquetFile]" = collections.OrderedDict()

    def _read(self, path: Path, groups, columns) -> pa.Table:
        if path not in self.files:
            self.files[path] = pq.ParquetFile(path)
            while len(self.files) > 12:
                self.files.popitem(last=False)
        return self.files[path].read_row_groups(list(groups), columns=columns)

    def get(self, u: int) -> _Chunk:
        if u in self.chunks:
            self.chunks.move_to_end(u)
            return self.chunks[u]
        unit, plan = self.plan.units[u], self.plan  # its groups cover exactly its rows in every file
        t = self._read(plan.images_dir / unit.shard, unit.image_groups, ["image_id", "labels"])
        ids = t.column("image_id").combine_chunks().cast(pa.string())
        e = self._read(plan.embeddings_dir / unit.shard, plan.embedding_groups[u], ["image_id", "embedding"])
        self._check(e, ids, plan.embeddings_dir / unit.shard, unit, "embed")
        emb = np.empty((e.num_rows, e.column("embedding").type.list_size), np.float32)
        fixed_matrix(e.column("embedding"), emb, 0)
        wide = None
        if plan.features_dir is not None:
            f = self._read(plan.features_dir / unit.shard, unit.feature_groups, ["image_id", "hog", "color_hist"])
            self._check(f, ids, plan.features_dir / unit.shard, unit, "features")
            d1 = f.column("hog").type.list_size
            wide = np.empty((f.num_rows, d1 + f.column("color_hist").type.list_size), np.float32)
            fixed_matrix(f.column("hog"), wide[:, :d1], 0)
            fixed_matrix(f.column("color_hist"), wide[:, d1:], 0)
        chunk = self.chunks[u] = _Chunk(ids.to_pylist(), multi_hot(t.column("labels"), self.space), emb, wide)
        while len(self.chunks) > self.keep:
            self.chunks.popitem(last=False)
        return chunk

    @staticmethod
    def _check(t: pa.Table, ids: pa.Array, path: Path, unit, command: str) -> None:
        if not t.column("image_id").combine_chunks().cast(pa.string()).equals(ids):
            raise UserError(f"{path}: image_ids of rows {unit.start}..{unit.start + unit.rows - 1} differ from its "
                            f"image shard; rerun 'wdr-pipe {command} --rebuild' for this split")


class EmbeddingDataset(SplitOrder, IterableDataset):
    """Batches (dicts, see the module doc) of one split's cached embeddings, for one rank."""

    def __init__(self, store: Union[Store, str, Path], split: str, embedding_key: str,
                 feature_key: Optional[str] = None, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                 weighted: bool = False, buffer_size: int = 1024, rank: Optional[int] = None,
                 world_size: Optional[int] = None, drop_last: bool = False, num_workers: int = 0):
        store = store if isinstance(store, Store) else open_store(store)
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size}: must be at least 1")
        self.split, self.embedding_key, self.feature_key = split, store.resolve_embedding_key(embedding_key), feature_key
        self.batch_size, self.shuffle, self.seed, self.weighted = int(batch_size), bool(shuffle), int(seed), bool(weighted)
        self.buffer_size, self.drop_last, self.num_workers = int(buffer_size), bool(drop_last), int(num_workers)
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.normalize = None
        self.plan = build_plan(store, split, self.embedding_key, feature_key, weighted=self.weighted)
        self.label_ids = label_space(store)
        self._control = torch.zeros(1 + max(1, self.num_workers), dtype=torch.int64).share_memory_()

    def __iter__(self) -> Iterator[dict]:
        epoch, worker, start = self._position()
        rows = self.worker_rows(epoch, worker)
        plan = self.plan
        reader = _Reader(plan, self.label_ids, sampling.units_in_memory(plan, self.buffer_size))
        units, offsets = plan.unit_of(rows), plan.row_offset[rows]
        end = len(rows) - (len(rows) % self.batch_size if self.drop_last else 0)
        for b in range(start, end, self.batch_size):
            stop = min(b + self.batch_size, end)
            yield self._collate(reader, rows[b:stop], units[b:stop], offsets[b:stop], worker, stop)

    def _collate(self, reader: _Reader, rows, units, offsets, worker: int, consumed: int) -> dict:
        n = len(rows)
        first = reader.get(int(units[0]))
        emb = np.empty((n, first.emb.shape[1]), np.float32)
        labels = np.empty((n, first.labels.shape[1]), np.float32)
        wide = np.empty((n, first.wide.shape[1]), np.float32) if first.wide is not None else None
        ids: List[str] = [""] * n
        for u in np.unique(units):
            chunk, at = reader.get(int(u)), np.flatnonzero(units == u)
            i = offsets[at]
            emb[at], labels[at] = chunk.emb[i], chunk.labels[i]
            if wide is not None:
                wide[at] = chunk.wide[i]
            for k, j in zip(at, i):
                ids[k] = chunk.ids[j]
        weight = np.ones(n, np.float32) if self.weighted else self.plan.weight[rows]
        batch = {"embedding": torch.from_numpy(emb), "labels": torch.from_numpy(labels),
                 "weight": torch.from_numpy(np.ascontiguousarray(weight, np.float32)), "image_id": ids,
                 "_worker": worker, "_consumed": consumed, "_failed": 0}
        if wide is not None:
            batch["wide"] = torch.from_numpy(wide)
        return batch


class EmbeddingLoader(Loader):
    """``data.Loader`` over an ``EmbeddingDataset``: the same epochs, state dict and device transfer."""

    def __iter__(self) -> Iterator[dict]:
        control = self.dataset._control
        control[0] = self.epoch
        control[1:] = torch.tensor(self.consumed, dtype=torch.int64)
        for batch in self.dataloader:
            worker = batch.pop("_worker")
            self.consumed[worker] = batch.pop("_consumed")
            self.failed += batch.pop("_failed")
            if self.device is not None:
                batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            yield batch
        self.set_epoch(self.epoch + 1)

    def _settings(self) -> dict:
        return {**super()._settings(), "embedding_key": self.dataset.embedding_key}


def make_embedding_loader(store: Union[Store, str, Path], split: str, batch_size: int = 64, num_workers: int = 0, *,
                          embedding_key: Optional[str] = None, feature_key: Optional[str] = None,
                          train: Optional[bool] = None, config: Optional[DataConfig] = None,
                          shuffle: Optional[bool] = None, seed: int = 0, weighted: bool = False,
                          buffer_size: int = 1024, rank: Optional[int] = None, world_size: Optional[int] = None,
                          drop_last: bool = False, device=None, prefetch_factor: int = 4,
                          persistent_workers: bool = True, timeout: float = 300.0) -> EmbeddingLoader:
    """An ``EmbeddingLoader`` for ``split`` (shuffled for ``train``, default: split == "train").

    ``config``: the data config the caller trains at; embeddings made at another one are refused,
    never used silently."""
    store = store if isinstance(store, Store) else open_store(store)
    key = store.resolve_embedding_key(embedding_key)
    if config is not None:
        made = read_json(store.embedding_config_path(key))["config"]
        have = DataConfig(made["size"], made["crop_pct"], made["interpolation"], tuple(made["mean"]),
                          tuple(made["std"]))
        if have != config:
            raise UserError(f"embeddings {key} were made at {have.size} px ({have}), not at the {config.size} px "
                            f"({config}) asked for; embed at that size, or use other embeddings")
    train = (split == "train") if train is None else train
    ds = EmbeddingDataset(store, split, key, feature_key=feature_key, batch_size=batch_size,
                          shuffle=train if shuffle is None else shuffle, seed=seed, weighted=weighted,
                          buffer_size=buffer_size, rank=rank, world_size=world_size, drop_last=drop_last,
                          num_workers=num_workers)
    return EmbeddingLoader(ds, device=device, prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                           timeout=timeout)


# -- the trainer's side --------------------------------------------------------------------------
class HeadOnly(torch.nn.Module):
    """The model from pooled deep features on: what compile and DDP wrap when batches hold embeddings."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, wide: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model.forward_head(x, wide)


def deep_input(batch: Dict[str, Any]) -> torch.Tensor:
    """What the Deep part gets: the cached embeddings when the batch has them, else the images."""
    return batch["embedding"] if "embedding" in batch else batch["image"]


def training_embeddings(store: Store, cfg, model, dcfg: DataConfig, device, progress=None) -> Optional[str]:
    """The embedding key a ``--deep fixed`` run of ``cfg`` trains from, computed first where missing; ``None``
    when it streams images (``--stream-images``, another ``--deep``, or random weights: nothing to key them by).

    The key is the one ``wdr-pipe embed`` gives the same backbone, weights (``--init RUN``: that run's
    checkpoint), data config and dtype; an existing float32 key is preferred to float16, and float16
    (``embed``'s default) is computed when neither exists. What is computed comes from a backbone loaded
    from those weights, not from ``model``, whose backbone may not hold them yet (a resumed ``--init`` run
    loads its checkpoint later)."""
    from .embed import EmbedConfig, _run_checkpoint, embed
    from .backbone import file_sha256

    if cfg.deep != "fixed" or cfg.stream_images:
        return None
    if cfg.init:
        _, _, ckpt = _run_checkpoint(cfg.init)
        digest, source = file_sha256(ckpt), {"run": cfg.init, "checkpoint": str(ckpt)}
    elif model.weights_digest is not None:
        digest, source = model.weights_digest, {"pretrained": cfg.pretrained, "weights": cfg.weights}
    else:
        log.info("--deep fixed with random backbone weights (no --pretrained, --weights or --init): nothing to key "
                 "cached embeddings by, so images are decoded every batch")
        return None
    configs = [EmbedConfig.of(cfg.backbone, digest, dcfg, dtype) for dtype in ("float32", "float16")]
    chosen = next((c for c in configs if store.embedding_config_path(c.key).exists()), configs[-1])
    result = embed(store, chosen, source, [cfg.train_split, cfg.val_split], device=device, progress=progress)
    how = (f"computed {result.details['images_computed']} images' vectors first, reused {result.reused} shards"
           if result.ran else f"all {result.reused} shards were there")
    log.info("--deep fixed: training from the cached embeddings %s (%s, %s px; %s); no image is decoded",
             chosen.key, chosen.dtype, chosen.size, how)
    return chosen.key


def use_embeddings(store: Store, cfg, data, model, dcfg, dist, progress=None):
    """Set ``data.embedding_key`` (``training_embeddings``, on rank 0 under torchrun, its key on every rank);
    returns the module the loop calls (the head alone with embeddings) and the loader factory that matches."""
    data.embedding_key = dist.on_main(lambda: training_embeddings(store, cfg, model, dcfg, dist.device, progress))
    if data.embedding_key is None:
        return model, make_loader
    return HeadOnly(model), functools.partial(make_embedding_loader, embedding_key=data.embedding_key)


__all__ = ["EmbeddingDataset", "EmbeddingLoader", "EmbeddingPlan", "HeadOnly", "build_plan", "deep_input",
           "make_embedding_loader", "training_embeddings", "use_embeddings"]
