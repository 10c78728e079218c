"""The embed stage: image shards -> the backbone's pooled vectors, kept in the store.

For every committed image shard ``images/<split>/part-NNNNN.parquet`` it
writes ``embeddings/<key>/<split>/part-NNNNN.parquet``, row-aligned with the
image shard (same image_id order; schema ``cache.schema.image_embeddings_schema``),
then ``part-NNNNN.stats.json`` last as the commit marker, as the features
stage does. Per image: the stored JPEG decoded in full (``imaging.decode_rgb``),
the backbone's eval transform (``transforms.EvalTransform``: resize, centre
crop), ``Normalize``, then ``backbone(x)``, timm's pooled features
(``num_classes=0``), stored as float16 (default) or float32. These are the
very pixels and the very function of the trainer's validation batches, so a
Deep-fixed model trained on them is the model trained on images without
augmentation.

``<key>`` hashes ``EmbedConfig``: the backbone name, the digest of the weights'
bytes (``backbone.weights_digest``; for ``--run`` the sha256 of the run's
checkpoint), the data config (size, crop, filter, mean, std), the dtype and
the code version. A shard is reused while its commit marker names the same
input (the image shard's size and the sha256 of its ``stats.json``): a rerun
does nothing, a re-fetched image shard is recomputed alone, other weights or
another image size write under another key. Precision is not in the key:
CUDA computes in bf16 (channels_last, batches sized to free memory), the CPU
in float32; each shard's marker records which.

Where the weights come from (``EmbedSpec``): ``--pretrained``, ``--weights
PATH`` or ``--run RUN`` (the run's best checkpoint, else its last, with the
EMA weights when it kept them: what ``train --init`` loads). Random weights
are refused: they would give a key that names nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ...cache import Store, as_store, commit_path, config_key, write_config, write_result
from ...cache.atomic import atomic_path
from ...cache.jsonfile import write_json
from ...cache.schema import image_embeddings_schema
from ...checks import check_all
from ...errors import UserError
from ...imaging import opencv_threads
from ...progress import Hook, Progress, emit
from ...result import StageResult
from ..checks import EMBED_BATCH, EMBED_BOUNDS, check_device
from ..data.transforms import DataConfig, data_config
from ..dist import pick_device
from ..model.backbone import OFFLINE_MODEL, check_name, create_backbone, file_sha256, weights_digest
from ..runs.checkpoint import trained_weights
from ..runs.folder import RunFolder, open_run
from .embedder import Embedder, decode_all

log = logging.getLogger("wdr_pipe")

EMBED_CODE_VERSION = 1  # bump when a change of this code changes the numbers
DTYPES = ("float16", "float32")
WRITE_OPTIONS = dict(compression="snappy", use_dictionary=["image_id"], write_statistics=["image_id"],
                     use_byte_stream_split=["embedding.list.element"])


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Everything that decides the numbers of an embedding shard; its hash is the cache key."""

    backbone: str
    weights: str                    # digest of the weights' bytes (sha256, or timm:<arch>.<tag>)
    size: int
    crop_pct: float
    interpolation: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    dtype: str = "float16"
    version: int = EMBED_CODE_VERSION

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype}: use float16 or float32")
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))

    @classmethod
    def of(cls, backbone: str, weights: str, dcfg: DataConfig, dtype: str = "float16") -> "EmbedConfig":
        return cls(backbone, weights, dcfg.size, dcfg.crop_pct, dcfg.interpolation, dcfg.mean, dcfg.std, dtype)

    @property
    def key(self) -> str:
        return config_key(self)

    @property
    def data_config(self) -> DataConfig:
        return DataConfig(self.size, self.crop_pct, self.interpolation, self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class EmbedSpec:
    """What ``wdr-pipe embed`` is asked for (its flags); ``resolve()`` turns it into the keyed ``EmbedConfig``."""

    backbone: Optional[str] = None      # default: the run's backbone, else tf_efficientnet_lite0
    pretrained: bool = False
    weights: Optional[str] = None
    run: Optional[str] = None
    image_size: Optional[int] = None    # default: the run's, else the backbone's own
    dtype: str = "float16"

    def __post_init__(self):
        given = [f for f, on in (("--pretrained", self.pretrained), ("--weights", self.weights is not None),
                                 ("--run", self.run is not None)) if on]
        if len(given) != 1:
            raise UserError(("pass only one of " if given else "pass one of ") + "--pretrained, --weights PATH or "
                            "--run RUN" + (f" (got {' and '.join(given)})" if given else
                                           ": a backbone with random weights gives meaningless embeddings"))
        for name in ("weights", "run"):
            value = getattr(self, name)
            if value is not None:
                if not str(value).strip():
                    raise UserError(f"--{name} is empty; pass a path")
                object.__setattr__(self, name, os.path.abspath(os.path.expanduser(str(value))))
        check_all("embed config", self, EMBED_BOUNDS)
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype}: use float16 or float32")
        if self.backbone is not None:
            try:
                check_name(self.backbone)
            except UserError as e:
                raise UserError(f"--{e}") from None


# -- weights: where they come from, their digest, the backbone with them -----------------------------
def run_checkpoint(path: str, flag: str = "--run") -> Tuple[RunFolder, Path]:
    """A training run and the checkpoint its backbone's weights come from (what ``train --init`` loads)."""
    run = open_run(path, flag, kinds=("train",))
    return run, run.best_else_last(flag)


def backbone_data_config(name: str, image_size: Optional[int] = None) -> DataConfig:
    """The backbone's ``DataConfig`` as the trainer resolves it (``data_config(model)``), without building it."""
    import types

    import timm

    pc = timm.models.get_pretrained_cfg(name)
    if pc is None:  # no published config: read it from the model itself
        return data_config(timm.create_model(name, pretrained=False, num_classes=0),
                           **({"size": image_size} if image_size else {}))
    return data_config(types.SimpleNamespace(pretrained_cfg=pc.to_dict()), **({"size": image_size} if image_size else {}))


def resolve(spec: EmbedSpec) -> Tuple[EmbedConfig, Dict[str, object]]:
    """The keyed config and where its weights come from (``source``, recorded in ``config.json``)."""
    if spec.run is not None:
        run, ckpt = run_checkpoint(spec.run)
        name = run.settings["backbone"]
        if spec.backbone is not None and spec.backbone != name:
            raise UserError(f"--backbone {spec.backbone}: the run {spec.run} trained {name}; "
                            f"leave --backbone out or pass {name}")
        dcfg = DataConfig.from_dict(run.doc["data_config"])
        if spec.image_size:
            dcfg = dataclasses.replace(dcfg, size=spec.image_size)
        source = {"run": str(run.root), "checkpoint": str(ckpt)}
        return EmbedConfig.of(name, file_sha256(ckpt), dcfg, spec.dtype), source
    name = spec.backbone or OFFLINE_MODEL
    digest = weights_digest(name, spec.pretrained, spec.weights)
    source = {"pretrained": spec.pretrained, "weights": spec.weights}
    return EmbedConfig.of(name, digest, backbone_data_config(name, spec.image_size), spec.dtype), source


def load_backbone(cfg: EmbedConfig, source: Dict[str, object]) -> torch.nn.Module:
    """The backbone of ``cfg`` with its weights from ``source``, checked to be the bytes the key names."""
    if source.get("run"):
        path = Path(str(source["checkpoint"]))
        run = open_run(str(source["run"]), "the embeddings' --run", kinds=("train",))
        if path.parent != run.checkpoints or path.stem not in ("best", "last"):
            raise UserError(f"{path}: not a checkpoint of the run {run.root} these embeddings name (their "
                            "config.json was edited); embed again with 'wdr-pipe embed --run RUN'")
        if not path.exists() or file_sha256(path) != cfg.weights:
            raise UserError(f"{path}: the checkpoint changed (or is gone) since these embeddings were made; "
                            f"embed again with 'wdr-pipe embed --run {source['run']}'")
        model = create_backbone(cfg.backbone)
        model.load_state_dict(trained_weights(path).backbone_state())
        return model
    weights = source.get("weights")
    if weights_digest(cfg.backbone, bool(source.get("pretrained")), weights) != cfg.weights:
        raise UserError(f"--weights {weights}: the file changed since these embeddings were made; "
                        "embed again with 'wdr-pipe embed' and the new file")
    return create_backbone(cfg.backbone, pretrained=bool(source.get("pretrained")), weights=weights)


def _slices(path: Path, batch: int) -> Iterator[Tuple[int, List[str], List[Optional[bytes]]]]:
    """(row group, image_ids, jpegs) of at most ``batch`` rows, row group by row group."""
    f = pq.ParquetFile(path)
    for g in range(f.num_row_groups):
        t = f.read_row_group(g, columns=["image_id", "jpeg"])
        ids, jpegs = t.column(0).to_pylist(), t.column(1).to_pylist()
        for a in range(0, max(1, len(ids)), batch):
            yield g, ids[a:a + batch], jpegs[a:a + batch]


def embed_shard(embedder: Embedder, cfg: EmbedConfig, image_shard: Path, out: Path, source: dict,
                on_rows) -> Dict[str, object]:
    """One embedding shard from one image shard (one row group per image row group), then its commit marker.
    Decoding of the next slice runs in threads while the backbone works on this one."""
    start = time.monotonic()
    schema = image_embeddings_schema(embedder.dim, cfg.dtype)
    np_dtype = np.float16 if cfg.dtype == "float16" else np.float32
    rows = errors = 0
    with opencv_threads(1), ThreadPoolExecutor(max(1, min(8, (os.cpu_count() or 2) - 1))) as pool, \
            ThreadPoolExecutor(1) as ahead, atomic_path(out) as tmp, \
            pq.ParquetWriter(tmp, schema, **WRITE_OPTIONS) as writer:
        slices = _slices(image_shard, embedder.batch_size)
        submit = lambda s: (s, ahead.submit(decode_all, embedder, pool, s[2]))  # noqa: E731
        nxt = next(slices, None)
        pending = submit(nxt) if nxt is not None else None
        group, buf = None, []

        def flush():
            if buf:
                writer.write_table(pa.concat_tables(buf), row_group_size=1 << 30)
                buf.clear()

        while pending is not None:
            (g, ids, _), fut = pending
            nxt = next(slices, None)
            pending = submit(nxt) if nxt is not None else None
            images, errs = fut.result()
            ok = np.array([e is None for e in errs])
            vec = np.zeros((len(ids), embedder.dim), np_dtype)
            if len(images):
                vec[ok] = embedder.vectors(images).astype(np_dtype)
            flat = pa.array(vec.ravel(), type=schema.field("embedding").type.value_type)
            column = pa.FixedSizeListArray.from_arrays(flat, type=schema.field("embedding").type, mask=pa.array(~ok))
            if g != group:
                flush()
                group = g
            buf.append(pa.Table.from_arrays([pa.array(ids, pa.string()), column, pa.array(errs, pa.string())],
                                            schema=schema))
            for image_id, e in zip(ids, errs):
                if e is not None:
                    log.warning("%s: image %s: %s", image_shard, image_id, e)
            rows += len(ids)
            errors += int((~ok).sum())
            on_rows(len(ids), int((~ok).sum()))
        flush()
    stats = {"rows": rows, "errors": errors, "seconds": round(time.monotonic() - start, 3), "key": cfg.key,
             "source": source, "device": str(embedder.device), "precision": "bf16" if embedder.cuda else "float32",
             "batch_size": embedder.batch_size}
    write_json(commit_path(out), stats)
    return stats


# -- the stage -----------------------------------------------------------------------------------
def pending_shards(store: Store, splits: Sequence[str], cfg: EmbedConfig, rebuild: bool):
    """``(shards to compute, per-split counts of the reused ones, images to compute)``."""
    want = {"float16": "halffloat", "float32": "float"}[cfg.dtype]

    def schema_problem(schema: pa.Schema):
        if schema.get_field_index("embedding") < 0:
            return "it has no embedding column"
        typ = schema.field("embedding").type.value_type
        return None if str(typ) == want else f"its vectors are {typ}, the key says {cfg.dtype}"

    return store.embeddings.plan(cfg.key, splits, schema_problem, rebuild)


def embed(store, cfg: EmbedConfig, source: Dict[str, object], splits: Optional[Sequence[str]] = None, *,
          backbone: Optional[torch.nn.Module] = None, device="auto", batch_size: Optional[int] = None,
          rebuild: bool = False, progress: Hook = None) -> StageResult:
    """Compute the missing or stale embedding shards of ``cfg`` for ``splits`` (default: every split with images).

    ``backbone``: the model already loaded with the weights ``cfg`` names (the trainer's); else it is
    loaded from ``source`` when there is work.
    """
    t0 = time.monotonic()
    store = as_store(store)
    splits = store.input_splits(splits)
    with store.writing("embed", [store.embeddings.dir(cfg.key, split) for split in splits]):  # one run at a time
        return _embed(store, cfg, source, splits, backbone, device, batch_size, rebuild, progress, t0)


def _embed(store: Store, cfg: EmbedConfig, source: Dict[str, object], splits: Sequence[str], backbone, device,
           batch_size: Optional[int], rebuild: bool, progress: Hook, t0: float) -> StageResult:
    tasks, summary, todo = pending_shards(store, splits, cfg, rebuild)
    root = store.embeddings.root(cfg.key)
    details: Dict[str, object] = {"images_computed": 0, "images_per_s": None}
    if tasks:
        dev = pick_device(str(device)) if not isinstance(device, torch.device) else device
        model = backbone if backbone is not None else load_backbone(cfg, source)
        embedder = Embedder(model, cfg.data_config, dev, batch_size)
        for t in tasks:  # uncommit first: a killed run never leaves a stale pair
            commit_path(t.out).unlink(missing_ok=True)
        if rebuild or not store.embeddings.config_path(cfg.key).exists():
            write_config(store.embeddings.config_path(cfg.key), cfg, dim=embedder.dim, source=source)
        log.info("embed %s: %d shards to compute (%d images) on %s, batches of %d; %d reused", cfg.key, len(tasks),
                 todo, dev, embedder.batch_size, sum(s["shards_reused"] for s in summary.values()))
        counts = {"done": 0, "failed": 0}
        start = time.monotonic()

        def on_rows(n, failed):
            counts["done"] += n
            counts["failed"] += failed
            rate = counts["done"] / max(1e-9, time.monotonic() - start)
            emit(progress, Progress("embed", done=counts["done"], total=todo, ok=counts["done"] - counts["failed"],
                                      failed=counts["failed"], message=f"{rate:.0f} img/s"))

        for t in tasks:
            stats = embed_shard(embedder, cfg, t.image_shard, t.out, t.source, on_rows)
            s = summary[t.split]
            s["shards_computed"] += 1
            s["rows"] += stats["rows"]
            s["errors"] += stats["errors"]
        details = {"images_computed": counts["done"], "device": str(dev), "batch_size": embedder.batch_size,
                   "images_per_s": round(counts["done"] / max(1e-9, time.monotonic() - start), 1)}
    total = lambda name: sum(s[name] for s in summary.values())  # noqa: E731
    result = StageResult("embed", cfg.key, str(root), time.monotonic() - t0, ran=total("shards_computed"),
                         reused=total("shards_reused"),
                         counts={"ok": total("rows") - total("errors"), "failed": total("errors")},
                         splits=summary, details={**details, "backbone": cfg.backbone, "dtype": cfg.dtype,
                                                  "image_size": cfg.size})
    if store.embeddings.config_path(cfg.key).exists():
        write_result(root, result)
    return result


def compute_embeddings(store, spec: EmbedSpec, splits: Optional[Sequence[str]] = None, *, device="auto",
                       batch_size: Optional[int] = None, rebuild: bool = False, progress: Hook = None) -> StageResult:
    """``wdr-pipe embed``: resolve the weights and the key of ``spec``, then ``embed``."""
    EMBED_BATCH.check("embed", batch_size, "batch_size")
    check_device(device)
    store = as_store(store)
    store.input_splits(splits)
    cfg, source = resolve(spec)
    return embed(store, cfg, source, splits, device=device, batch_size=batch_size, rebuild=rebuild,
                 progress=progress)


__all__ = ["DTYPES", "EmbedConfig", "EmbedSpec", "backbone_data_config", "compute_embeddings", "embed", "load_backbone",
           "resolve", "run_checkpoint"]
