"""Streaming loader from the store into PyTorch: ``make_loader(store, split, ..., embedding_key=None)``.

Each batch is a dict:

- ``image``: uint8 (B, 3, S, S) in channels_last memory order (as the
  workers write it, no transposing copy), or float normalised on ``device``
  when the loader was given one (moved with ``non_blocking=True``);
  with an ``embedding_key``, instead:
- ``embedding``: float32 (B, D), the backbone's stored pooled vectors of
  ``embeddings/<key>/<split>`` (no JPEG is read or decoded);
- ``wide``: float32 (B, D1 + D2), HOG and colour histogram side by side
  (only with a ``feature_key``; ``wide.py``);
- ``labels``: float32 (B, L) multi-hot over ``wdr_pipe.cache.label_space``
  (all zero for an unlabelled split);
- ``weight``: float32 (B,), the loss weight: the image's weight from
  ``stats/<split>/sample_weights.parquet`` (1.0 without stats), or 1.0 when
  weighted sampling already applies it;
- ``image_id``: list of str.

Which of ``image`` and ``embedding`` a loader's batches hold is decided once,
by its ``embedding_key``: ``loader.deep_key`` names it, for every caller.

How rows are split across ranks and workers, shuffled and sampled is in
``sampling.py``: in short, every rank gets exactly ``ceil(N / world_size)``
samples and the same number of batches (ranks that come up short repeat a
row from the start of the epoch), and the order is a function of
``(seed, epoch, rank, worker)``, the same for images and embeddings. Workers
read whole row groups (``reader.py``: the image shard and the row-aligned
embedding and feature shards together, image_ids checked to match) and keep
only the units the shuffle window spans in memory (``buffer_size / rows per
unit + 3`` of them: about 110 MB per worker with 256-row groups, 8,100 HOG
floats per row and the default buffer of 1,024). A row whose features or
embedding failed is left out when the layout is made (``layout.py``); a row
that fails to decode at run time is dropped from its batch (which comes out
one smaller) and counted in ``skipped``.

Resume: ``loader.state_dict()`` holds the epoch and, per worker, how many of
its samples have been yielded to the caller (each batch carries its worker
id and count); ``load_state_dict`` makes the next ``iter(loader)`` continue
each worker's stream right there, without repeating or skipping a sample, and
in the same order: the DataLoader takes batches from its worker processes in
turn starting at process 0, so after ``taken`` batches process ``p`` serves
the logical stream ``(p + taken) % workers`` (the next batch is stream
``taken % workers``'s), whatever the number of workers.
The state is the same on every rank, so saving rank 0's is enough; it names
the embedding key, so a run that streamed images cannot resume on embeddings
or the other way round.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ...cache import Store, open_store
from ...cache import label_space
from ...cache.jsonfile import read_json
from ...errors import UserError
from ...imaging import decode_rgb, opencv_threads
from ..dist import Dist
from . import sampling
from .layout import build_layout
from .reader import UnitReader
from .transforms import DataConfig, Normalize, data_config, make_transform
from .wide import wide_dim

log = logging.getLogger("wdr_pipe")


class StoreDataset(IterableDataset):
    """An iterable of batches (dicts, see the module doc) of one split of a store, for one rank.

    ``num_workers`` must be the DataLoader's (``make_loader`` takes care of it);
    ``transform(img_uint8_hwc, rng) -> uint8 HWC`` defaults to the train
    transform for ``shuffle=True`` and the eval one otherwise, at timm's
    default data config. ``normalize`` (a ``Normalize``) makes workers
    output float images instead of uint8. With ``embedding_key`` the batches
    hold the stored embeddings and no image is read.
    """

    def __init__(self, store: Union[Store, str, Path], split: str, feature_key: Optional[str] = None,
                 transform=None, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                 weighted: bool = False, buffer_size: int = 1024, rank: Optional[int] = None,
                 world_size: Optional[int] = None, drop_last: bool = False, num_workers: int = 0,
                 normalize: Optional[Normalize] = None, embedding_key: Optional[str] = None):
        store = store if isinstance(store, Store) else open_store(store)
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size}: must be at least 1")
        if feature_key is not None:
            from ...cache import feature_config

            feature_config(store, feature_key)  # a UserError naming the keys the store has
        self.split, self.feature_key, self.batch_size = split, feature_key, int(batch_size)
        self.embedding_key = store.embeddings.resolve_key(embedding_key) if embedding_key is not None else None
        self.shuffle, self.seed, self.weighted = bool(shuffle), int(seed), bool(weighted)
        self.buffer_size, self.drop_last, self.num_workers = int(buffer_size), bool(drop_last), int(num_workers)
        self.rank, self.world_size = Dist.share(rank, world_size)
        self.transform = transform if transform is not None else make_transform(DataConfig(), train=self.shuffle)
        self.normalize = normalize if self.embedding_key is None else None
        self.layout = build_layout(store, split, feature_key, weighted=self.weighted, embedding_key=self.embedding_key)
        self.label_ids = label_space(store)
        self.wide_dim = 0
        if feature_key is not None:
            import pyarrow.parquet as pq

            self.wide_dim = wide_dim(pq.read_schema(self.layout.features_dir / self.layout.units[0].shard))
        # epoch, rotation and per-worker start positions, shared with worker processes (persistent ones too)
        self._control = torch.zeros(2 + max(1, self.num_workers), dtype=torch.int64).share_memory_()

    # -- sizes and order ---------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.label_ids)

    def _workers(self) -> int:
        return max(1, self.num_workers)

    def worker_samples(self, worker: int) -> int:
        return sampling.worker_size(self.layout.num_rows, self.world_size, worker, self._workers(), self.batch_size)

    def _worker_batches(self, worker: int) -> int:
        n = self.worker_samples(worker)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return sum(self._worker_batches(w) for w in range(self._workers()))

    def worker_rows(self, epoch: int, worker: int) -> np.ndarray:
        """Canonical row numbers ``worker`` of this rank emits in ``epoch``, in order."""
        return sampling.worker_rows(self.layout, seed=self.seed, epoch=epoch, rank=self.rank,
                                    world_size=self.world_size, worker=worker, num_workers=self._workers(),
                                    batch_size=self.batch_size, shuffle=self.shuffle, weighted=self.weighted,
                                    buffer_size=self.buffer_size)

    def _position(self) -> Tuple[int, int, int]:
        """``(epoch, worker, samples already consumed)`` of the DataLoader worker calling it: ``worker`` is the
        logical stream it serves, its process number turned by the rotation ``Loader`` set (module doc)."""
        info = get_worker_info()
        process, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self._workers():
            raise UserError(f"{type(self).__name__} was made for num_workers={self.num_workers} but runs in a "
                            f"DataLoader with {workers} workers; pass the same num_workers (make_loader does)")
        worker = (process + int(self._control[1])) % workers
        return int(self._control[0]), worker, int(self._control[2 + worker])

    # -- batches -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        epoch, worker, start = self._position()
        rows = self.worker_rows(epoch, worker)
        reader = UnitReader(self.layout, self.label_ids, sampling.units_in_memory(self.layout, self.buffer_size))
        units = self.layout.unit_of(rows)
        end = len(rows) - (len(rows) % self.batch_size if self.drop_last else 0)
        for b in range(start, end, self.batch_size):
            stop = min(b + self.batch_size, end)
            if self.embedding_key is None:
                yield self._image_batch(reader, rows, units, b, stop, epoch, worker)
            else:
                yield self._embedding_batch(reader, rows[b:stop], units[b:stop], worker, stop)

    def _image_batch(self, reader: UnitReader, rows, units, b: int, stop: int, epoch: int, worker: int) -> dict:
        """Decode and transform rows ``b:stop`` one by one; a row that fails is dropped and counted."""
        layout = self.layout
        images, keep, failed = [], [], 0
        for k in range(b, stop):
            chunk = reader.get(int(units[k]))
            i = int(layout.row_offset[rows[k]])
            try:
                if chunk.wide_ok is not None and not chunk.wide_ok[i]:
                    raise ValueError("null features")
                rng = np.random.default_rng([self.seed, epoch, self.rank, worker, k])
                images.append(self.transform(decode_rgb(chunk.jpegs[i]), rng))
                keep.append((chunk, i, int(rows[k])))
            except ValueError as e:
                failed += 1
                log.warning("%s: image %s skipped (%s)", layout.images_dir, chunk.ids[i], e)
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
        labels = np.stack([c.labels[i] for c, i, _ in keep]) if n else np.zeros((0, self.num_labels), np.uint8)
        wide = None
        if self.feature_key is not None:
            wide = np.stack([c.wide[i] for c, i, _ in keep]) if n else np.zeros((0, self.wide_dim), np.float32)
        return self._batch("image", image, labels.astype(np.float32), wide, np.array([r for _, _, r in keep], np.int64),
                           [c.ids[i] for c, i, _ in keep], worker, stop, failed)

    def _embedding_batch(self, reader: UnitReader, rows, units, worker: int, consumed: int) -> dict:
        """Rows gathered unit by unit from the stored vectors (nothing decoded, nothing fails)."""
        n, offsets = len(rows), self.layout.row_offset[rows]
        first = reader.get(int(units[0]))
        emb = np.empty((n, first.embeddings.shape[1]), np.float32)
        labels = np.empty((n, first.labels.shape[1]), np.float32)
        wide = np.empty((n, first.wide.shape[1]), np.float32) if first.wide is not None else None
        ids: List[str] = [""] * n
        for u in np.unique(units):
            chunk, at = reader.get(int(u)), np.flatnonzero(units == u)
            i = offsets[at]
            emb[at], labels[at] = chunk.embeddings[i], chunk.labels[i]
            if wide is not None:
                wide[at] = chunk.wide[i]
            for k, j in zip(at, i):
                ids[k] = chunk.ids[j]
        return self._batch("embedding", torch.from_numpy(emb), labels, wide, rows, ids, worker, consumed, 0)

    def _batch(self, deep_key: str, deep, labels: np.ndarray, wide: Optional[np.ndarray], rows: np.ndarray,
               ids: List[str], worker: int, consumed: int, failed: int) -> dict:
        weight = np.ones(len(ids), np.float32) if self.weighted else self.layout.weight[rows]
        batch = {deep_key: deep, "labels": torch.from_numpy(labels),
                 "weight": torch.from_numpy(np.ascontiguousarray(weight, np.float32)), "image_id": ids,
                 "_worker": worker, "_consumed": consumed, "_failed": failed}
        if wide is not None:
            batch["wide"] = torch.from_numpy(wide)
        return batch


class Loader:
    """A DataLoader over a ``StoreDataset`` with epochs, resumable state and device transfer."""

    def __init__(self, dataset: StoreDataset, device=None, normalize: Optional[Normalize] = None,
                 prefetch_factor: int = 4, persistent_workers: bool = True, timeout: float = 300.0,
                 pin_memory: Optional[bool] = None, multiprocessing_context=None):
        self.dataset = dataset
        self.deep_key = "image" if dataset.embedding_key is None else "embedding"  # what the Deep part gets
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
        """Rows left out: failed downloads, embeddings and features (of the split), decode failures (so far)."""
        return {**self.dataset.layout.skipped, "decode": self.failed}

    def taken(self) -> int:
        """Batches of this epoch yielded so far (a worker's batches are whole but for the epoch's last)."""
        return sum(-(-c // self.dataset.batch_size) for c in self.consumed)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next ``iter``."""
        self.epoch, self.consumed = int(epoch), [0] * len(self.consumed)

    def __iter__(self) -> Iterator[dict]:
        control = self.dataset._control
        control[0] = self.epoch
        control[1] = self.taken() % len(self.consumed)  # the stream whose batch comes next (module doc)
        control[2:] = torch.tensor(self.consumed, dtype=torch.int64)
        # Workers fork here (the first time, when persistent). They should not run OpenCV's own
        # thread pool, but cv2.setNumThreads inside a forked worker hangs once the parent has
        # started that pool (as fetch or features do); so the parent forks them at one thread.
        with opencv_threads(1):
            batches = iter(self.dataloader)
        images = self.deep_key == "image"
        for batch in batches:
            worker = batch.pop("_worker")
            self.consumed[worker] = batch.pop("_consumed")
            self.failed += batch.pop("_failed")
            if self.device is not None:
                batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                         for k, v in batch.items()}
                if images and self.dataset.normalize is None:  # not done in the workers already
                    batch["image"] = self.normalize(batch["image"])
            yield batch
        self.set_epoch(self.epoch + 1)

    def _settings(self) -> dict:
        ds = self.dataset
        return {"split": ds.split, "rows": ds.layout.num_rows, "seed": ds.seed, "world_size": ds.world_size,
                "num_workers": ds.num_workers, "batch_size": ds.batch_size, "shuffle": ds.shuffle,
                "weighted": ds.weighted, "buffer_size": ds.buffer_size, "embedding_key": ds.embedding_key}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": list(self.consumed), "failed": self.failed, **self._settings()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._settings()
        diff = [f"{k}={state.get(k)!r} (this loader: {v!r})" for k, v in mine.items() if state.get(k) != v]
        if diff:
            raise UserError("loader state was saved with other settings: " + ", ".join(diff) +
                            "; resume with the same settings (or start the epoch afresh with set_epoch)")
        self.epoch, self.consumed, self.failed = int(state["epoch"]), list(state["consumed"]), int(state["failed"])


def check_embeddings(store: Store, key: str, config: DataConfig) -> None:
    """Embeddings ``key`` were made at ``config`` (size, crop, filter, mean, std): never used silently at another."""
    have = DataConfig.from_dict(read_json(store.embeddings.config_path(key))["config"])
    if have != config:
        raise UserError(f"embeddings {key} were made at {have.size} px ({have}), not at the {config.size} px "
                        f"({config}) asked for; embed at that size, or use other embeddings")


def make_loader(store: Union[Store, str, Path], split: str, batch_size: int = 64, num_workers: Optional[int] = None,
                *, feature_key: Optional[str] = None, embedding_key: Optional[str] = None,
                train: Optional[bool] = None, model=None, config: Optional[DataConfig] = None, transform=None,
                scale=(0.25, 1.0), hflip: float = 0.5, shuffle: Optional[bool] = None, seed: int = 0,
                weighted: bool = False, buffer_size: int = 1024, rank: Optional[int] = None,
                world_size: Optional[int] = None, drop_last: bool = False, device=None,
                normalize_in_workers: bool = False, prefetch_factor: int = 4, persistent_workers: bool = True,
                timeout: float = 300.0) -> Loader:
    """A ``Loader`` for ``split``: train transform and shuffling for ``train`` (default: split == "train").

    The image size, crop, filter, mean and std come from ``config``, else from
    the timm ``model``, else timm's defaults. Without ``device`` batches hold
    uint8 images and ``loader.normalize`` is for the caller to apply; with it
    they arrive on the device, normalised. ``scale``: area range of the train
    crop (0.25, not timm's 0.08, so that a crop still shows what the labels
    describe). Train with ``drop_last=True``: one batch shape throughout.

    ``embedding_key``: batches of the store's cached embeddings instead of images (made at ``config``
    when one is given: embeddings of another data config are refused). ``num_workers`` defaults to 2
    for images and 0 for embeddings, which need no decoding.
    """
    if embedding_key is not None:
        store = store if isinstance(store, Store) else open_store(store)
        embedding_key = store.embeddings.resolve_key(embedding_key)
        if config is not None:
            check_embeddings(store, embedding_key, config)
    train = (split == "train") if train is None else train
    num_workers = (2 if embedding_key is None else 0) if num_workers is None else num_workers
    cfg = config if config is not None else data_config(model)
    normalize = Normalize.from_config(cfg)
    ds = StoreDataset(store, split, feature_key=feature_key,
                      transform=transform if transform is not None else make_transform(cfg, train, scale, hflip),
                      batch_size=batch_size, shuffle=train if shuffle is None else shuffle, seed=seed,
                      weighted=weighted, buffer_size=buffer_size, rank=rank, world_size=world_size,
                      drop_last=drop_last, num_workers=num_workers,
                      normalize=normalize if normalize_in_workers else None, embedding_key=embedding_key)
    return Loader(ds, device=device, normalize=normalize,
                  prefetch_factor=prefetch_factor, persistent_workers=persistent_workers, timeout=timeout)


__all__ = ["Loader", "StoreDataset", "check_embeddings", "make_loader"]
