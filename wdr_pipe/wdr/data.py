"""Streaming loader from the store into PyTorch: ``make_loader(store, split, ...)``.

Each batch is a dict:

- ``image``: uint8 (B, 3, S, S) in channels_last memory order (as the
  workers write it, no transposing copy), or float normalised on ``device``
  when the loader was given one (moved with ``non_blocking=True``);
- ``wide``: float32 (B, D1 + D2), HOG and colour histogram side by side
  (only with a ``feature_key``);
- ``labels``: float32 (B, L) multi-hot over ``wdr_pipe.cache.label_space``
  (all zero for an unlabelled split);
- ``weight``: float32 (B,), the loss weight: the image's weight from
  ``stats/<split>/sample_weights.parquet`` (1.0 without stats), or 1.0 when
  weighted sampling already applies it;
- ``image_id``: list of str.

How rows are split across ranks and workers, shuffled and sampled is in
``sampling.py``: in short, every rank gets exactly ``ceil(N / world_size)``
samples and the same number of batches (ranks that come up short repeat a
row from the start of the epoch), and the order is a function of
``(seed, epoch, rank, worker)``. Workers read whole row groups (image shard
and the row-aligned feature shard together, image_ids checked to match) and
keep only the units the shuffle window spans in memory (``buffer_size / rows
per unit + 3`` of them: about 110 MB per worker with 256-row groups, 8,100
HOG floats per row and the default buffer of 1,024). A row whose features failed is left out
when the plan is made; a row that fails to decode at run time is dropped
from its batch (which comes out one smaller) and counted in ``skipped``.

Resume: ``loader.state_dict()`` holds the epoch and, per worker, how many of
its samples have been yielded to the caller (each batch carries its worker
id and count); ``load_state_dict`` makes the next ``iter(loader)`` continue
each worker's stream right there, without repeating or skipping a sample.
The state is the same on every rank, so saving rank 0's is enough.
"""
from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Tuple, Dict, Iterator, List, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..cache import Store, open_store
from ..cache import fixed_matrix, label_space, multi_hot
from ..errors import UserError
from ..imaging import decode_rgb, opencv_threads
from . import sampling
from .transforms import DataConfig, Normalize, data_config, make_transform

log = logging.getLogger("wdr_pipe")


def _rank_world(rank: Optional[int], world_size: Optional[int]):
    if rank is None or world_size is None:
        dist = torch.distributed
        on = dist.is_available() and dist.is_initialized()
        rank = (dist.get_rank() if on else 0) if rank is None else rank
        world_size = (dist.get_world_size() if on else 1) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise UserError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    return int(rank), int(world_size)


class _Chunk:
    """One unit's rows, decoded from Parquet (not yet from JPEG)."""

    def __init__(self, ids: List[str], jpegs: List[bytes], labels: np.ndarray, wide: Optional[np.ndarray],
                 wide_ok: Optional[np.ndarray]):
        self.ids, self.jpegs, self.labels, self.wide, self.wide_ok = ids, jpegs, labels, wide, wide_ok


class _UnitReader:
    """Loads units on demand and keeps the last few (LRU), so memory is bounded."""

    def __init__(self, plan: sampling.Plan, space: np.ndarray, keep: int):
        self.plan, self.space, self.keep = plan, space, keep
        self.chunks: "collections.OrderedDict[int, _Chunk]" = collections.OrderedDict()
        self.files: "collections.OrderedDict[Path, pq.ParquetFile]" = collections.OrderedDict()

    def _file(self, path: Path) -> pq.ParquetFile:
        if path not in self.files:
            self.files[path] = pq.ParquetFile(path)
            while len(self.files) > 8:
                self.files.popitem(last=False)
        return self.files[path]

    def get(self, u: int) -> _Chunk:
        chunk = self.chunks.get(u)
        if chunk is None:
            chunk = self.chunks[u] = self._load(u)
            while len(self.chunks) > self.keep:
                self.chunks.popitem(last=False)
        else:
            self.chunks.move_to_end(u)
        return chunk

    def _load(self, u: int) -> _Chunk:
        unit, plan = self.plan.units[u], self.plan
        path = plan.images_dir / unit.shard
        t = self._file(path).read_row_groups(list(unit.image_groups), columns=["image_id", "jpeg", "labels"])
        ids = t.column("image_id").combine_chunks().cast(pa.string())
        labels = multi_hot(t.column("labels"), self.space, where=str(path))
        wide = ok = None
        if plan.features_dir is not None:
            fpath = plan.features_dir / unit.shard
            f = self._file(fpath).read_row_groups(list(unit.feature_groups), columns=["image_id", "hog", "color_hist"])
            if not f.column("image_id").combine_chunks().cast(pa.string()).equals(ids):
                raise UserError(f"{fpath}: image_ids of rows {unit.start}..{unit.start + unit.rows - 1} differ from "
                                f"{path}; rerun 'wdr-pipe features --rebuild' for this split")
            hog, hist = f.column("hog"), f.column("color_hist")
            d1 = hog.type.list_size
            wide = np.empty((f.num_rows, d1 + hist.type.list_size), np.float32)
            fixed_matrix(hog, wide[:, :d1], 0)
            fixed_matrix(hist, wide[:, d1:], 0)
            ok = ~np.isnan(wide).any(axis=1)
        return _Chunk(ids.to_pylist(), t.column("jpeg").to_pylist(), labels, wide, ok)


class SplitOrder:
    """Sizes and row order of one rank's share of a split, shared by the image loader and the
    cached-embeddings loader. The class using it sets ``plan``, ``label_ids``, ``seed``, ``rank``,
    ``world_size``, ``batch_size``, ``shuffle``, ``weighted``, ``buffer_size``, ``drop_last``,
    ``num_workers`` and ``_control`` (epoch, then samples consumed per worker, in shared memory)."""

    @property
    def num_labels(self) -> int:
        return len(self.label_ids)

    def _workers(self) -> int:
        return max(1, self.num_workers)

    def worker_samples(self, worker: int) -> int:
        return sampling.worker_size(self.plan.num_rows, self.world_size, worker, self._workers(), self.batch_size)

    def _worker_batches(self, worker: int) -> int:
        n = self.worker_samples(worker)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return sum(self._worker_batches(w) for w in range(self._workers()))

    def worker_rows(self, epoch: int, worker: int) -> np.ndarray:
        """Canonical row numbers ``worker`` of this rank emits in ``epoch``, in order."""
        return sampling.worker_rows(self.plan, seed=self.seed, epoch=epoch, rank=self.rank,
                                    world_size=self.world_size, worker=worker, num_workers=self._workers(),
                                    batch_size=self.batch_size, shuffle=self.shuffle, weighted=self.weighted,
                                    buffer_size=self.buffer_size)

    def _position(self) -> Tuple[int, int, int]:
        """``(epoch, worker, samples already consumed)`` of the DataLoader worker calling it."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self._workers():
            raise UserError(f"{type(self).__name__} was made for num_workers={self.num_workers} but runs in a "
                            f"DataLoader with {workers} workers; pass the same num_workers (the make_*loader "
                            "functions do)")
        return int(self._control[0]), worker, int(self._control[1 + worker])


class StoreDataset(SplitOrder, IterableDataset):
    """An iterable of batches (dicts, see the module doc) of one split of a store, for one rank.

    ``num_workers`` must be the DataLoader's (``make_loader`` takes care of it);
    ``transform(img_uint8_hwc, rng) -> uint8 HWC`` defaults to the train
    transform for ``shuffle=True`` and the eval one otherwise, at timm's
    default data config. ``normalize`` (a ``Normalize``) makes workers
    output float images instead of uint8.
    """

    def __init__(self, store: Union[Store, str, Path], split: str, feature_key: Optional[str] = None,
                 transform=None, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                 weighted: bool = False, buffer_size: int = 1024, rank: Optional[int] = None,
                 world_size: Optional[int] = None, drop_last: bool = False, num_workers: int = 0,
                 normalize: Optional[Normalize] = None):
        store = store if isinstance(store, Store) else open_store(store)
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size}: must be at least 1")
        if feature_key is not None:
            from ..cache import feature_config

            feature_config(store, feature_key)  # a UserError naming the keys the store has
        self.split, self.feature_key, self.batch_size = split, feature_key, int(batch_size)
        self.shuffle, self.seed, self.weighted = bool(shuffle), int(seed), bool(weighted)
        self.buffer_size, self.drop_last, self.num_workers = int(buffer_size), bool(drop_last), int(num_workers)
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.transform = transform if transform is not None else make_transform(DataConfig(), train=self.shuffle)
        self.normalize = normalize
        self.plan = sampling.build_plan(store, split, feature_key, weighted=self.weighted)
        self.label_ids = label_space(store)
        self.wide_dim = 0
        if feature_key is not None:
            schema = pq.read_schema(self.plan.features_dir / self.plan.units[0].shard)
            self.wide_dim = schema.field("hog").type.list_size + schema.field("color_hist").type.list_size
        # epoch and per-worker start positions, shared with worker processes (persistent ones too)
        self._control = torch.zeros(1 + max(1, self.num_workers), dtype=torch.int64).share_memory_()

    def __iter__(self) -> Iterator[dict]:
        epoch, worker, start = self._position()
        return self._batches(self.worker_rows(epoch, worker), epoch, worker, start)

    def _batches(self, rows: np.ndarray, epoch: int, worker: int, start: int) -> Iterator[dict]:
        plan = self.plan
        reader = _UnitReader(plan, self.label_ids, sampling.units_in_memory(plan, self.buffer_size))
        units = plan.unit_of(rows)
        end = len(rows) - (len(rows) % self.batch_size if self.drop_last else 0)
        for b in range(start, end, self.batch_size):
            stop = min(b + self.batch_size, end)
            images, keep, failed = [], [], 0
            for k in range(b, stop):
                chunk = reader.get(int(units[k]))
                i = int(plan.row_offset[rows[k]])
                try:
                    if chunk.wide_ok is not None and not chunk.wide_ok[i]:
                        raise ValueError("null features")
                    rng = np.random.default_rng([self.seed, epoch, self.rank, worker, k])
                    images.append(self.transform(decode_rgb(chunk.jpegs[i]), rng))
                    keep.append((chunk, i, int(rows[k])))
                except ValueError as e:
                    failed += 1
                    log.warning("%s: image %s skipped (%s)", plan.images_dir, chunk.ids[i], e)
            yield self._collate(images, keep, worker, stop, failed)

    def _collate(self, images: List[np.ndarray], keep, worker: int, consumed: int, failed: int) -> dict:
        n = len(images)
        size = images[0].shape[:2] if n else (0, 0)
        image = torch.empty((n,) + tuple(size) + (3,), dtype=torch.uint8)  # NHWC: no transposing copy
        if get_worker_info() is not None:
            image.share_memory_()  # filled in place: no copy when it crosses to the main process
        x = image.numpy()
        for j, img in enumerate(images):
            x[j] = img
        image = image.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory: what convnets on GPUs want
        if self.normalize is not None:
            image = self.normalize(image)
        rows = np.array([r for _, _, r in keep], np.int64)
        weight = np.ones(n, np.float32) if self.weighted else self.plan.weight[rows]
        labels = np.stack([c.labels[i] for c, i, _ in keep]) if n else np.zeros((0, self.num_labels), np.uint8)
        batch = {"image": image, "labels": torch.from_numpy(labels.astype(np.float32)),
                 "weight": torch.from_numpy(np.ascontiguousarray(weight, np.float32)),
                 "image_id": [c.ids[i] for c, i, _ in keep],
                 "_worker": worker, "_consumed": consumed, "_failed": failed}
        if self.feature_key is not None:
            wide = np.stack([c.wide[i] for c, i, _ in keep]) if n else np.zeros((0, self.wide_dim), np.float32)
            batch["wide"] = torch.from_numpy(wide)
        return batch


class Loader:
    """A DataLoader over a ``StoreDataset`` with epochs, resumable state and device transfer."""

    def __init__(self, dataset: StoreDataset, device=None, normalize: Optional[Normalize] = None,
                 prefetch_factor: int = 4, persistent_workers: bool = True, timeout: float = 300.0,
                 pin_memory: Optional[bool] = None, multiprocessing_context=None):
        self.dataset = dataset
        self.device = torch.device(device) if device is not None else None
        self.normalize = normalize if normalize is not None else Normalize()
        workers = dataset.num_workers
        if pin_memory is None:
            pin_memory = self.device is not None and self.device.type == "cuda"
        self.dataloader = DataLoader(
            dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if workers else None, persistent_workers=persistent_workers and workers > 0,
            timeout=timeout if workers else 0,
            multiprocessing_context=multiprocessing_context if workers else None,
            # a new iterator draws a base seed from this generator, not from torch's global one,
            # so iterating (a validation pass too) never moves the caller's random stream
            generator=torch.Generator().manual_seed(dataset.seed))
        if self.device is not None:
            self.normalize = self.normalize.to(self.device)
        self.epoch = 0
        self.consumed = [0] * dataset._workers()
        self.failed = 0  # rows dropped at run time, all epochs so far

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def skipped(self) -> Dict[str, int]:
        """Rows left out: failed downloads and failed features (of the split), decode failures (seen so far)."""
        return {**self.dataset.plan.skipped, "decode": self.failed}

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next ``iter``."""
        self.epoch, self.consumed = int(epoch), [0] * len(self.consumed)

    def __iter__(self) -> Iterator[dict]:
        control = self.dataset._control
        control[0] = self.epoch
        control[1:] = torch.tensor(self.consumed, dtype=torch.int64)
        # Workers fork here (the first time, when persistent). They should not run OpenCV's own
        # thread pool, but cv2.setNumThreads inside a forked worker hangs once the parent has
        # started that pool (as fetch or features do); so the parent forks them at one thread.
        with opencv_threads(1):
            batches = iter(self.dataloader)
        for batch in batches:
            worker = batch.pop("_worker")
            self.consumed[worker] = batch.pop("_consumed")
            self.failed += batch.pop("_failed")
            if self.device is not None:
                batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                         for k, v in batch.items()}
                if self.dataset.normalize is None:  # not done in the workers already
                    batch["image"] = self.normalize(batch["image"])
            yield batch
        self.set_epoch(self.epoch + 1)

    def _settings(self) -> dict:
        ds = self.dataset
        return {"split": ds.split, "rows": ds.plan.num_rows, "seed": ds.seed, "world_size": ds.world_size,
                "num_workers": ds.num_workers, "batch_size": ds.batch_size, "shuffle": ds.shuffle,
                "weighted": ds.weighted, "buffer_size": ds.buffer_size}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": list(self.consumed), "failed": self.failed, **self._settings()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._settings()
        diff = [f"{k}={state.get(k)!r} (this loader: {v!r})" for k, v in mine.items() if state.get(k) != v]
        if diff:
            raise UserError("loader state was saved with other settings: " + ", ".join(diff) +
                            "; resume with the same settings (or start the epoch afresh with set_epoch)")
        self.epoch, self.consumed, self.failed = int(state["epoch"]), list(state["consumed"]), int(state["failed"])


def make_loader(store: Union[Store, str, Path], split: str, batch_size: int = 64, num_workers: int = 2, *,
                feature_key: Optional[str] = None, train: Optional[bool] = None, model=None,
                config: Optional[DataConfig] = None, transform=None, scale=(0.25, 1.0), hflip: float = 0.5,
                shuffle: Optional[bool] = None, seed: int = 0, weighted: bool = False, buffer_size: int = 1024,
                rank: Optional[int] = None, world_size: Optional[int] = None, drop_last: bool = False,
                device=None, normalize_in_workers: bool = False, prefetch_factor: int = 4,
                persistent_workers: bool = True, timeout: float = 300.0) -> Loader:
    """A ``Loader`` for ``split``: train transform and shuffling for ``train`` (default: split == "train").

    The image size, crop, filter, mean and std come from ``config``, else from
    the timm ``model``, else timm's defaults. Without ``device`` batches hold
    uint8 images and ``loader.normalize`` is for the caller to apply; with it
    they arrive on the device, normalised. ``scale``: area range of the train
    crop (0.25, not timm's 0.08, so that a crop still shows what the labels
    describe). Train with ``drop_last=True``: one batch shape throughout.
    """
    train = (split == "train") if train is None else train
    cfg = config if config is not None else data_config(model)
    normalize = Normalize.from_config(cfg)
    ds = StoreDataset(store, split, feature_key=feature_key,
                      transform=transform if transform is not None else make_transform(cfg, train, scale, hflip),
                      batch_size=batch_size, shuffle=train if shuffle is None else shuffle, seed=seed,
                      weighted=weighted, buffer_size=buffer_size, rank=rank, world_size=world_size,
                      drop_last=drop_last, num_workers=num_workers,
                      normalize=normalize if normalize_in_workers else None)
    return Loader(ds, device=device, normalize=normalize,
                  prefetch_factor=prefetch_factor, persistent_workers=persistent_workers, timeout=timeout)


__all__ = ["Loader", "StoreDataset", "make_loader"]
