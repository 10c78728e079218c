"""The pieces ``train.py``'s loop is made of: processes, data checks, model, loss, optimizer, scoring.

Each function does one thing the loop names; every bad input a user can
cause is a ``UserError`` naming the flag and the fix, raised before anything
is written.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as td
import torch.nn.functional as F

from ..cache import Store
from ..cache import fixed_matrix, label_embeddings, label_space, label_weights, load_labels, sample_weights
from ..errors import UserError
from .checkpoint import RunDir, eval_weights, load_checkpoint
from .trainconfig import TrainConfig, flag

log = logging.getLogger("wdr_pipe")


# -- processes -------------------------------------------------------------------------------
class Dist:
    """This process's rank, world size and device; under torchrun, the process group (gloo on CPU, nccl on CUDA).

    A group already started by the caller (``wdr-pipe run`` starts one with gloo for CPU tensors and
    nccl for CUDA ones, ``workflow/ranks.py``) is used as it is and left open by ``stop``."""

    def __init__(self, device: str = "auto"):
        env = os.environ
        self.world = int(env.get("WORLD_SIZE", "1")) if "RANK" in env else 1
        self.rank = int(env["RANK"]) if self.world > 1 else 0
        want = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu (or auto)")
        self.started = False
        if self.world > 1:
            if want == "cuda":
                local = int(env.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                want = f"cuda:{local}"
            if not td.is_initialized():
                td.init_process_group(backend="nccl" if want.startswith("cuda") else "gloo")
                self.started = True
        self.device = torch.device(want)

    def on_main(self, fn):
        """``fn()`` on rank 0, its value (or its error) on every rank."""
        if self.world == 1:
            return fn()
        out: List[Any] = [None, None]
        if self.rank == 0:
            try:
                out[0] = fn()
            except Exception as e:
                out[1] = str(e)
                td.broadcast_object_list(out, src=0)
                raise
        td.broadcast_object_list(out, src=0)
        if out[1] is not None:
            raise UserError(out[1])
        return out[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out: List[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        t = t.detach().clone()
        td.all_reduce(t)
        return t / self.world

    def sync_buffers(self, *models) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere: each rank's last batches moved its own."""
        if self.world > 1:
            for model in models:
                for b in model.buffers():
                    td.broadcast(b, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            td.barrier()

    def stop(self) -> None:
        if self.started and td.is_initialized():
            td.destroy_process_group()


# -- data ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Data:
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


def prepare_data(store: Store, cfg: TrainConfig, need_wide_stats: bool = True) -> Data:
    """Check the splits, pick the labels, read what the model and the loss need from the store."""
    for name in ("train_split", "val_split"):
        split = getattr(cfg, name)
        if not store.image_shards(split):
            have = store.image_splits()
            raise UserError(f"{flag(name)} {split}: the store {store.root} has no committed images of that split "
                            f"(it has: {', '.join(have) or 'none'}); pick one of those or fetch it first")
    for name in ("val_split", "train_split"):
        try:
            _, y = load_labels(store, getattr(cfg, name))
        except UserError as e:
            if "has no labels" not in str(e):
                raise
            raise UserError(f"{flag(name)} {getattr(cfg, name)}: an unlabelled split (no image has labels); "
                            "train and validate on labelled splits") from None
    space, counts = label_space(store), y.sum(0).astype(np.int64)
    columns = None
    if cfg.top_labels is not None:
        if cfg.top_labels > len(space):
            raise UserError(f"--labels {cfg.labels}: the store's label space has only {len(space)} labels; "
                            f"use top:N with N <= {len(space)}, or --labels all")
        columns = np.sort(np.argsort(-counts, kind="stable")[:cfg.top_labels])
    data = Data(space if columns is None else space[columns], columns, len(space),
                counts if columns is None else counts[columns])
    ids = data.label_ids
    stats = f"run 'wdr-pipe stats --store {store.root} --split {cfg.train_split}' first"
    if "wide" in cfg.parts:
        keys = store.feature_keys()
        key = cfg.feature_key or (keys[0] if len(keys) == 1 else None)
        if key not in keys:
            fix = (f"pass --feature-key, one of {', '.join(keys)}" if keys and not cfg.feature_key else
                   f"run 'wdr-pipe features --store {store.root}' first, or leave wide out of --parts")
            what = f"no feature config {cfg.feature_key!r}" if cfg.feature_key else \
                ("several feature configs" if keys else "no image features")
            raise UserError(f"--parts {','.join(cfg.parts)}: the wide part needs image features and the store "
                            f"{store.root} has {what}; {fix}")
        data.feature_key = key
        data.wide_dim, data.wide_mean, data.wide_std = wide_stats(store, cfg.train_split, key, need_wide_stats)
    if "recurrent" in cfg.parts and cfg.label_embeddings != "random":
        try:
            have, vectors = label_embeddings(store, cfg.train_split)
        except UserError:
            raise UserError(f"--label-embeddings {cfg.label_embeddings}: pre-trained label embeddings come from "
                            f"the store's label statistics, which are missing; {stats}, or use "
                            "--label-embeddings random") from None
        data.label_vectors = vectors[np.searchsorted(have, ids)]
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
        pw = np.array(table.set_index("label")["pos_weight"].reindex(ids).fillna(1.0), np.float32)
        data.pos_weight = torch.from_numpy(pw)
    elif cfg.pos_weight is not None:
        data.pos_weight = torch.full((len(ids),), float(cfg.pos_weight))
    return data


def wide_stats(store: Store, split: str, key: str, compute: bool = True):
    """``(dim, mean, std)`` of the wide input (HOG and colour histogram side by side) over ``split``,
    one feature shard at a time (float64 sums; rows whose features failed are left out)."""
    shards = [f for _, f in store.feature_shards(key, split)]
    schema = pq.read_schema(shards[0])
    d1, d2 = schema.field("hog").type.list_size, schema.field("color_hist").type.list_size
    if not compute:  # a resumed run: the model's buffers come from its checkpoint
        return d1 + d2, np.zeros(d1 + d2, np.float32), np.ones(d1 + d2, np.float32)
    total, sq, n = np.zeros(d1 + d2), np.zeros(d1 + d2), 0
    for p in shards:
        t = pq.read_table(p, columns=["hog", "color_hist"])
        x = np.empty((t.num_rows, d1 + d2), np.float32)
        fixed_matrix(t.column("hog"), x[:, :d1], 0)
        fixed_matrix(t.column("color_hist"), x[:, d1:], 0)
        x = x[~np.isnan(x).any(axis=1)].astype(np.float64)
        total, sq, n = total + x.sum(0), sq + (x * x).sum(0), n + len(x)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean * mean, 0.0))
    return d1 + d2, mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


# -- model -----------------------------------------------------------------------------------
def build(cfg: TrainConfig, data: Data):
    from .model import build_model

    return build_model(cfg.model_config(), len(data.label_ids), wide_dim=data.wide_dim, wide_mean=data.wide_mean,
                       wide_std=data.wide_std, label_vectors=data.label_vectors)


def load_init(model, init: str, label_ids: np.ndarray) -> Dict[str, Any]:
    """Start from another run's weights (its best model): every tensor of the same name and shape,
    the head only when the two runs predict the same labels."""
    run = RunDir(init)
    if not run.is_run():
        raise UserError(f"--init {init}: not a wdr-pipe run folder; pass the --out folder of an earlier run")
    path = run.best if run.best.exists() else run.last
    ckpt = load_checkpoint(path)
    same_labels = list(ckpt["label_ids"]) == [int(i) for i in label_ids]
    own = model.state_dict()
    take = {k: v for k, v in eval_weights(ckpt).items()
            if k in own and own[k].shape == v.shape and (same_labels or k.startswith("backbone."))}
    if not any(k.startswith("backbone.") for k in take):
        raise UserError(f"--init {init}: its backbone ({ckpt['settings']['backbone']}) does not match "
                        f"--backbone {model.cfg.backbone}; initialise from a run of the same backbone")
    model.load_state_dict(take, strict=False)
    log.info("initialised %d of %d tensors from %s (step %d)", len(take), len(own), path, ckpt["step"])
    return {"path": str(run.root), "checkpoint": path.name, "step": ckpt["step"], "tensors": len(take),
            "of": len(own), "not_loaded": sorted(set(own) - set(take))}


def data_config_of(model, image_size: Optional[int]):
    from .transforms import data_config

    return data_config(model.backbone, **({"size": image_size} if image_size else {}))


def finite(model) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all())


def diverged(step: int, cfg: TrainConfig, run: RunDir, last_saved: int, what: str) -> UserError:
    kept = (f"the last good checkpoint (step {last_saved}) is kept in {run.last}" if run.last.exists()
            else "no checkpoint had been written yet")
    return UserError(f"training diverged at step {step}: {what}; {kept}; train again with a lower --lr "
                     f"(now {cfg.lr:g}) or with --clip-grad 1.0")


# -- loss, optimizer, EMA --------------------------------------------------------------------
class Criterion(torch.nn.Module):
    """The loss: per image, the mean over labels of BCE (with ``pos_weight``) or of timm's asymmetric
    loss (so a batch's mean is ASL's sum divided by its element count: learning rates carry over);
    per batch, the mean over images, each weighted by ``weight`` when given (``--weighting loss``)."""

    def __init__(self, loss: str = "bce", pos_weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.loss = loss
        if loss == "asl":
            from timm.loss import AsymmetricLossMultiLabel

            self.asl = AsymmetricLossMultiLabel(reduction="none", pos_weight=pos_weight)
        self.register_buffer("pos_weight", pos_weight)

    def per_image(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss == "asl":
            return self.asl(logits.float(), labels).mean(1)
        return F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=self.pos_weight,
                                                  reduction="none").mean(1)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor] = None):
        per_image = self.per_image(logits, labels)
        return (per_image if weight is None else per_image * weight).mean()


def criterion(cfg: TrainConfig, pos_weight: Optional[torch.Tensor], device) -> Criterion:
    return Criterion(cfg.loss, pos_weight).to(device)


def optimizer(cfg: TrainConfig, model, updates_per_epoch: int):
    """timm's optimizer over the trainable parameters, and its schedule stepped once per update."""
    import timm.optim
    import timm.scheduler

    opt = timm.optim.create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.sched == "none":
        return opt, None
    sched, _ = timm.scheduler.create_scheduler_v2(
        opt, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr / 100,
        decay_epochs=max(1, cfg.epochs // 3), decay_milestones=[max(1, cfg.epochs // 3), max(1, 2 * cfg.epochs // 3)],
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    sched.step_update(num_updates=0)
    return opt, sched


def ema(cfg: TrainConfig, model):
    if not cfg.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)  # decay ramps up: useful on short runs too


def tensorboard(run: RunDir, step: int = 0):
    """A TensorBoard writer into ``RUN/tb/`` (None without tensorboard). Resumed at ``step``, it hides what
    a killed run logged after its last checkpoint, as ``metrics.jsonl`` is cut back to it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run.tb), purge_step=step if step > 0 else None)


# -- scoring ---------------------------------------------------------------------------------
@torch.no_grad()
def predict(model, loader, columns, amp: bool, dist: Dist, criterion) -> Dict[str, np.ndarray]:
    """Scores of every image of ``loader``'s split (gathered from all ranks, each image once):
    ``ids``, ``probs`` (N, L) float32, ``labels`` (N, L) uint8, ``loss`` (N,)."""
    model.eval()
    ids, probs, labels, losses = [], [], [], []
    for batch in loader:
        y = batch["labels"][:, columns] if columns is not None else batch["labels"]
        with torch.autocast(loader.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = (model(batch["image"], batch.get("wide")) if "image" in batch else  # or cached embeddings
                      model.forward_head(batch["embedding"], batch.get("wide"))).float()
        ids += batch["image_id"]
        losses.append(criterion.per_image(logits, y).cpu())
        probs.append(torch.sigmoid(logits).cpu())
        labels.append(y.to(torch.uint8).cpu())
    local = (ids, torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(losses).numpy())
    parts = dist.gather(local)
    all_ids = [i for p in parts for i in p[0]]
    _, first = np.unique(np.array(all_ids, dtype=object).astype(str), return_index=True)  # ranks pad: once each
    first = np.sort(first)
    return {"ids": np.array(all_ids, dtype=object)[first],
            **{k: np.concatenate([p[j] for p in parts])[first] for j, k in ((1, "probs"), (2, "labels"), (3, "loss"))}}


def scores(scored: Dict[str, np.ndarray], thresholds=0.5) -> Dict[str, float]:
    """Mean loss and micro precision, recall and F1 with ``probs >= thresholds``."""
    y, pred = scored["labels"].astype(bool), scored["probs"] >= thresholds
    tp, fp, fn = int((y & pred).sum()), int((~y & pred).sum()), int((y & ~pred).sum())
    return {"loss": float(scored["loss"].mean()), "f1": 2 * tp / max(1, 2 * tp + fp + fn),
            "precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn)}


def thresholds(cfg: TrainConfig, data: Data, scored: Dict[str, np.ndarray], run: RunDir) -> Dict[str, Any]:
    """Per-label thresholds tuned on the validation predictions (Fan-Lin, ``thresholds.py``), written to
    ``RUN/thresholds.json``; ``cv`` also measures their gain out of fold (5 folds)."""
    from .thresholds import ThresholdResult, cross_validated_gain, save_thresholds, tune_thresholds

    y, s = scored["labels"], scored["probs"]
    if cfg.thresholds == "none":
        f1 = scores(scored)["f1"]
        fit = ThresholdResult(thresholds=np.full(y.shape[1], 0.5), global_threshold=0.5, f1_before=f1,
                              f1_global=f1, f1_after=f1, passes=0, fallback=np.zeros(y.shape[1], bool),
                              min_positives=cfg.min_positives)
    else:
        fit = tune_thresholds(y, s, min_positives=cfg.min_positives)
        log.info("%s", fit.describe())
    save_thresholds(run.thresholds, data.label_ids, fit)
    out = {"thresholds": cfg.thresholds, "val_f1_at_0.5": fit.f1_before, "val_f1_global": fit.f1_global,
           "global_threshold": fit.global_threshold, "val_f1_tuned": fit.f1_after}
    if cfg.thresholds == "cv":
        cv = cross_validated_gain(y, s, folds=min(5, len(y)), seed=cfg.seed, min_positives=cfg.min_positives)
        out.update(val_f1_tuned_out_of_fold=cv.f1_out_of_fold, val_f1_global_out_of_fold=cv.f1_global_out_of_fold)
    return out


def run_doc(cfg: TrainConfig, data: Data, model, dcfg, identity, init, world: int) -> Dict[str, Any]:
    """What ``RUN/config.json`` records besides the settings."""
    import timm

    from .. import __version__

    return {"settings": cfg.settings(), "key": cfg.key(), "store": identity, "feature_key": data.feature_key,
            "embedding_key": data.embedding_key,
            "labels": {"mode": cfg.labels, "ids": data.label_ids.tolist(), "of": data.space_size,
                       "train_positives": data.train_counts.tolist()},
            "backbone": {"name": cfg.backbone, "pretrained": cfg.pretrained, "weights": cfg.weights,
                         "weights_digest": model.weights_digest, "num_features": model.num_features},
            "data_config": dataclasses.asdict(dcfg), "model_config": model.cfg.to_dict(),
            "wide_dim": data.wide_dim, "init": init, "world_size": world,
            "versions": {"wdr_pipe": __version__, "torch": torch.__version__, "timm": timm.__version__}}
