"""What a training run trains from, before its first step: ``prepare`` (the store's inputs, the model, the loss,
the cached embeddings a heads phase trains from) and ``phase_loaders`` (a phase's training and validation
loaders). ``loop.py`` and ``lr_find.py`` both start here."""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional

import torch

from ...cache import open_store
from ...errors import UserError
from ...progress import Hook
from ..data.layout import build_layout
from ..data.loader import make_loader
from ..data.sampling import rank_size
from ..data.transforms import data_config
from ..dist import Dist
from ..model.network import build_model
from .config import TrainConfig
from .init import load_init
from .inputs import TrainInputs, prepare_inputs, training_embeddings
from .loss import Criterion
from .recipe import Phase, fit_batch, phases


def prepare(cfg: TrainConfig, dist: Dist, resuming: bool = False, progress: Hook = None):
    """What a run of ``cfg`` trains from: ``(store, inputs, model, init, data config, criterion)``, the model on the
    device with its first phase's backbone mode, the cached embeddings it trains from made where missing
    (``inputs.embedding_key``)."""
    device = dist.device
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    # -- the store: splits, label space, wide statistics, loss weights
    store = open_store(cfg.store)
    inputs = prepare_inputs(store, cfg, need_wide_stats=not resuming)
    check_batch(rank_size(build_layout(store, cfg.train_split, inputs.feature_key).num_rows, dist.world), cfg)

    # -- the model and the loss
    model = build_model(cfg.model_config(deep=phases(cfg)[0].deep), len(inputs.label_ids), wide_dim=inputs.wide_dim,
                        wide_mean=inputs.wide_mean, wide_std=inputs.wide_std, label_vectors=inputs.label_vectors)
    init = load_init(model, cfg.init, inputs.label_ids) if cfg.init and not resuming else None
    dcfg = data_config(model.backbone, **({"size": cfg.image_size} if cfg.image_size else {}))
    model.to(device, memory_format=torch.channels_last)  # as the loader's images: 2x faster on CPU too
    criterion = Criterion(cfg.loss, inputs.pos_weight).to(device)
    # a phase from cached embeddings: the backbone's vectors from the store (made first where missing)
    inputs.embedding_key = dist.on_main(lambda: training_embeddings(store, cfg, model, dcfg, device, progress))
    return store, inputs, model, init, dcfg, criterion


def phase_loaders(store, cfg: TrainConfig, phase: Phase, inputs: TrainInputs, loader_args: Dict[str, Any],
                  workers: Optional[int] = None):
    """``(train loader, validation loader)`` of a phase: cached embeddings or images (``workers``: a loader of
    its own, its processes not kept), and an epoch cut into equal batches of at most ``--batch-size`` (none
    dropped: small sets see every image)."""
    args = {**loader_args, "embedding_key": inputs.embedding_key if phase.embeddings else None}
    if workers is not None:
        args.update(num_workers=workers, persistent_workers=False)
    val = make_loader(store, cfg.val_split, cfg.batch_size, train=False,  # embeddings: nothing to decode
                      **{**args, **({"num_workers": 0} if args["embedding_key"] else {})})
    train = functools.partial(make_loader, store, cfg.train_split, train=True, drop_last=False,
                              weighted=cfg.weighting == "sample", **args)
    loader = train(cfg.batch_size)
    rows = check_batch(rank_size(loader.dataset.layout.num_rows, args["world_size"]), cfg)
    batch = fit_batch(rows, cfg.batch_size)
    return (loader if batch == cfg.batch_size else train(batch)), val


def check_batch(rows: int, cfg: TrainConfig) -> int:
    """``rows`` (training images per process), or a ``UserError`` when they are fewer than one batch."""
    if rows < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size}: larger than the {rows} training images per process; lower "
                        f"--batch-size")
    return rows


__all__ = ["phase_loaders", "prepare"]
