"""What a training run trains from, before its first step: ``prepare`` (the store's inputs, the model, the loss,
the cached embeddings a heads phase trains from) and ``phase_loaders`` (a phase's training and validation
loaders). ``loop.py`` and ``lr_find.py`` both start here."""
from __future__ import annotations

import functools
import logging
from typing import Any, Dict, Optional

import torch

from ...cache import open_store
from ...progress import Hook
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

log = logging.getLogger("wdr_pipe")


def prepare(cfg: TrainConfig, dist: Dist, resuming: bool = False, progress: Hook = None):
    """What a run of ``cfg`` trains from: ``(store, inputs, model, init, data config, criterion)``, the model on the
    device with its first phase's backbone mode, the cached embeddings it trains from made where missing
    (``inputs.embedding_key``)."""
    device = dist.device
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    # -- the store: splits, label space, wide statistics, loss weights
    store = open_store(cfg.store)
    inputs = prepare_inputs(store, cfg, need_wide_stats=not resuming)

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
    rows = rank_size(loader.dataset.layout.num_rows, args["world_size"])
    batch = fit_batch(rows, cfg.batch_size)
    if rows < cfg.batch_size:
        log.info("--batch-size %d: the %d training images per process are one batch", cfg.batch_size, rows)
    return (loader if batch == cfg.batch_size else train(batch)), val


__all__ = ["phase_loaders", "prepare"]
