"""What a training run reads of the store before its first step: ``prepare_inputs(store, cfg) -> TrainInputs``.

The label space and the labels the model predicts (``--labels``), their
training counts, the wide input's key and statistics, the label vectors of the
Recurrent part, the loss's ``pos_weight``; and, for ``--deep fixed``, the key
of the cached embeddings it trains from (``training_embeddings``, computed
first where missing). Every input a user can get wrong is a ``UserError``
naming the flag and the fix, raised before anything is written.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np
import torch

from ...cache import Store, label_embeddings, label_space, label_weights, load_labels, sample_weights
from ...errors import UserError
from ..data.transforms import DataConfig
from ..data.wide import wide_stats
from ..score.checks import check_split
from .config import TrainConfig, flag

log = logging.getLogger("wdr_pipe")


@dataclasses.dataclass
class TrainInputs:
    """What the model and the loss take from the store (no data: the loaders stream that)."""

    label_ids: np.ndarray                 # ids of the labels the model predicts (label space order)
    columns: Optional[np.ndarray]         # their columns in the store's label space; None = all
    space_size: int
    train_counts: np.ndarray              # positives per predicted label in the training split
    feature_key: Optional[str] = None
    wide_dim: int = 0
    wide_mean: Optional[np.ndarray] = None
    wide_std: Optional[np.ndarray] = None
    label_vectors: Optional[np.ndarray] = None
    pos_weight: Optional[torch.Tensor] = None
    embedding_key: Optional[str] = None   # --deep fixed: batches of cached embeddings instead of images


def prepare_inputs(store: Store, cfg: TrainConfig, need_wide_stats: bool = True) -> TrainInputs:
    """Check the splits, pick the labels, read what the model and the loss need from the store.
    ``need_wide_stats=False`` (a resumed run: its model's statistics come from the checkpoint) skips them."""
    inputs = _labels(store, cfg)
    stats = f"run 'wdr-pipe stats --store {store.root} --split {cfg.train_split}' first"
    if "wide" in cfg.parts:
        inputs.feature_key = _feature_key(store, cfg)
        inputs.wide_dim, inputs.wide_mean, inputs.wide_std = wide_stats(store, cfg.train_split, inputs.feature_key,
                                                                        need_wide_stats)
    if "recurrent" in cfg.parts and cfg.label_embeddings != "random":
        try:
            have, vectors = label_embeddings(store, cfg.train_split)
        except UserError:
            raise UserError(f"--label-embeddings {cfg.label_embeddings}: pre-trained label embeddings come from "
                            f"the store's label statistics, which are missing; {stats}, or use "
                            "--label-embeddings random") from None
        inputs.label_vectors = vectors[np.searchsorted(have, inputs.label_ids)]
    if cfg.weighting != "none":
        try:
            sample_weights(store, cfg.train_split)
        except UserError:
            raise UserError(f"--weighting {cfg.weighting}: image weights come from the store's label statistics, "
                            f"which are missing; {stats}, or use --weighting none") from None
    if cfg.pos_weight == "stats":
        try:
            table = label_weights(store, cfg.train_split)
        except UserError:
            raise UserError(f"--pos-weight stats: per-label weights come from the store's label statistics, "
                            f"which are missing; {stats}, or pass a number such as --pos-weight 2") from None
        pw = np.array(table.set_index("label")["pos_weight"].reindex(inputs.label_ids).fillna(1.0), np.float32)
        inputs.pos_weight = torch.from_numpy(pw)
    elif cfg.pos_weight is not None:
        inputs.pos_weight = torch.full((len(inputs.label_ids),), float(cfg.pos_weight))
    return inputs


def _labels(store: Store, cfg: TrainConfig) -> TrainInputs:
    """The splits checked (committed images, labels) and the labels the model predicts (``--labels``)."""
    for name in ("train_split", "val_split"):
        check_split(store, getattr(cfg, name), flag=flag(name))
    for name in ("val_split", "train_split"):
        try:
            _, y = load_labels(store, getattr(cfg, name))
        except UserError as e:
            if "has no labels" not in str(e):
                raise
            raise UserError(f"{flag(name)} {getattr(cfg, name)}: an unlabelled split (no image has labels); "
                            "train and validate on labelled splits") from None
    space, counts = label_space(store), y.sum(0).astype(np.int64)
    if cfg.top_labels is None:
        return TrainInputs(space, None, len(space), counts)
    if cfg.top_labels > len(space):
        raise UserError(f"--labels {cfg.labels}: the store's label space has only {len(space)} labels; "
                        f"use top:N with N <= {len(space)}, or --labels all")
    columns = np.sort(np.argsort(-counts, kind="stable")[:cfg.top_labels])
    return TrainInputs(space[columns], columns, len(space), counts[columns])


def _feature_key(store: Store, cfg: TrainConfig) -> str:
    """The feature config of the wide part: ``--feature-key``, or the store's only one."""
    keys = store.features.keys()
    key = cfg.feature_key or (keys[0] if len(keys) == 1 else None)
    if key not in keys:
        fix = (f"pass --feature-key, one of {', '.join(keys)}" if keys and not cfg.feature_key else
               f"run 'wdr-pipe features --store {store.root}' first, or leave wide out of --parts")
        what = f"no feature config {cfg.feature_key!r}" if cfg.feature_key else \
            ("several feature configs" if keys else "no image features")
        raise UserError(f"--parts {','.join(cfg.parts)}: the wide part needs image features and the store "
                        f"{store.root} has {what}; {fix}")
    return key


def training_embeddings(store: Store, cfg: TrainConfig, model, dcfg: DataConfig, device,
                        progress=None) -> Optional[str]:
    """The embedding key a run of ``cfg`` trains its heads from (``--deep fixed``, a recipe's heads phase), computed
    first where missing; ``None`` when it streams images (``--stream-images``, no phase of ``--deep fixed``, or
    random weights: nothing to key them by).

    The key is the one ``wdr-pipe embed`` gives the same backbone, weights (``--init RUN``: that run's
    checkpoint), data config and dtype; an existing float32 key is preferred to float16, and float16
    (``embed``'s default) is computed when neither exists. What is computed comes from a backbone loaded
    from those weights, not from ``model``, whose backbone may not hold them yet (a resumed ``--init`` run
    loads its checkpoint later)."""
    from ..embed.stage import EmbedConfig, embed, run_checkpoint
    from ..model.backbone import file_sha256

    from .recipe import phases

    if not any(p.embeddings for p in phases(cfg)):
        return None
    if cfg.init:
        _, ckpt = run_checkpoint(cfg.init, "--init")
        digest, source = file_sha256(ckpt), {"run": cfg.init, "checkpoint": str(ckpt)}
    elif model.weights_digest is not None:
        digest, source = model.weights_digest, {"pretrained": cfg.pretrained, "weights": cfg.weights}
    else:
        log.info("--deep fixed with random backbone weights (no --pretrained, --weights or --init): nothing to key "
                 "cached embeddings by, so images are decoded every batch")
        return None
    configs = [EmbedConfig.of(cfg.backbone, digest, dcfg, dtype) for dtype in ("float32", "float16")]
    chosen = next((c for c in configs if store.embeddings.config_path(c.key).exists()), configs[-1])
    result = embed(store, chosen, source, [cfg.train_split, cfg.val_split], device=device, progress=progress)
    how = (f"computed {result.details['images_computed']} images' vectors first, reused {result.reused} shards"
           if result.ran else f"all {result.reused} shards were there")
    log.info("heads: training from the cached embeddings %s (%s, %s px; %s); no image is decoded",
             chosen.key, chosen.dtype, chosen.size, how)
    return chosen.key


__all__ = ["TrainInputs", "prepare_inputs", "training_embeddings"]
