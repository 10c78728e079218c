"""A trained run's model scoring a store split or a few images: ``ModelScorer``.

The model is rebuilt from ``RUN/config.json`` (its ``model_config``, with the
backbone created without weights: they all come from the checkpoint, so no
weights file or network is needed) and loaded with the checkpoint's
evaluation weights (the EMA's when the run kept one). A split streams through
the same loader as training (``make_loader``, eval transform, the run's data
config and feature key), batch by batch, on CUDA when there is one (bf16
autocast and channels_last there, as in training); only the probabilities are
kept, never the images. ``tta="flip"`` averages the probabilities of each
image and its mirror image (the wide features are those of the image itself).

A ``--deep fixed`` run that trained from the store's cached embeddings (its
``config.json`` names their key) is scored from them too when the store has
them for the split and no TTA is asked for: no image is decoded, and the
probabilities are those the run was validated and its thresholds tuned with.

A split's probabilities are reused from ``RUN/eval/<split>/predictions.parquet``
when that file was written from the same checkpoint weights, TTA, split and
store content (its ``source``): an ensemble over evaluated runs does not
score them again.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..cache import Store
from ..errors import UserError
from ..progress import Hook, Progress, emit
from .checkpoint import eval_weights, load_checkpoint, state_digest
from .checks import check_device
from .evalfiles import Scored, read_meta, read_predictions
from .runs import TTA, Run, check_inputs
from .transforms import DataConfig, EvalTransform, Normalize

log = logging.getLogger("wdr_pipe")


def resolve_device(device: str = "auto") -> torch.device:
    check_device(device)
    want = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else str(device)
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu (or auto)")
    try:
        return torch.device(want)
    except RuntimeError:
        raise UserError(f"--device {device}: use auto, cpu, cuda or cuda:N") from None


def build_run_model(run: Run, state: Dict[str, torch.Tensor]):
    """The run's ``WDRModel`` with ``state`` loaded (no weights file, no network)."""
    from .backbone import create_backbone
    from .model import ModelConfig, WDRModel

    doc = run.doc
    cfg = ModelConfig(**{**doc["model_config"], "pretrained": False, "weights": None})
    wide_dim = int(doc.get("wide_dim") or 0)
    vectors = state["recurrent.embeddings"].float().numpy() if "recurrent.embeddings" in state else None
    model = WDRModel(cfg, create_backbone(cfg.backbone), len(run.label_ids), wide_dim=wide_dim,
                     wide_mean=np.zeros(wide_dim, np.float32) if wide_dim else None,
                     wide_std=np.ones(wide_dim, np.float32) if wide_dim else None,
                     label_vectors=vectors if cfg.label_embeddings != "random" else None)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{run.root}: the checkpoint does not fit the model of its config.json "
                        f"({str(e).splitlines()[0]}); the run folder was changed by hand: train it again") from e
    return model.eval()


class ModelScorer:
    """One training run, loaded for inference (``checkpoint`` best or last, ``tta`` none or flip)."""

    def __init__(self, run: Run, checkpoint: str = "best", tta: str = "none", device: str = "auto",
                 batch_size: int = 64, workers: int = 2):
        if tta not in TTA:
            raise UserError(f"--tta {tta}: use one of {', '.join(TTA)}")
        if batch_size < 1 or workers < 0:
            raise UserError(f"--batch-size {batch_size} --workers {workers}: use a batch of 1 or more, 0 or more workers")
        self.run, self.checkpoint, self.tta = run, checkpoint, tta
        self.batch_size, self.workers = int(batch_size), int(workers)
        path = run.checkpoint_path(checkpoint)
        ckpt = load_checkpoint(path)
        if [int(i) for i in ckpt.get("label_ids", [])] != run.label_ids.tolist():
            raise UserError(f"{path}: its label ids differ from {run.dir.config}'s; the run folder was changed by "
                            "hand: train it again")
        state = eval_weights(ckpt)
        self.step = int(ckpt.get("step", 0))
        self.digest = state_digest(state)[:16]
        self.device = resolve_device(device)
        self.amp = self.device.type == "cuda"
        self.model = build_run_model(run, state).to(self.device, memory_format=torch.channels_last)
        dc = run.doc["data_config"]
        self.data_config = DataConfig(size=int(dc["size"]), crop_pct=float(dc["crop_pct"]),
                                      interpolation=dc["interpolation"], mean=tuple(dc["mean"]), std=tuple(dc["std"]))
        self.normalize = Normalize.from_config(self.data_config).to(self.device)
        self.label_ids = run.label_ids

    # -- the model on a batch ----------------------------------------------------------------
    @torch.inference_mode()
    def probs(self, image: torch.Tensor, wide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L) float32 probabilities of a normalised batch on the device (TTA applied)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            p = torch.sigmoid(self.model(image, wide).float())
            if self.tta == "flip":
                p = (p + torch.sigmoid(self.model(torch.flip(image, dims=[3]), wide).float())) / 2
        return p.float()

    @torch.inference_mode()
    def head_probs(self, embedding: torch.Tensor, wide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L) probabilities from the backbone's cached pooled vectors (the head alone)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return torch.sigmoid(self.model.forward_head(embedding.float(), wide).float()).float()

    # -- a store split ------------------------------------------------------------------------
    def embedding_key(self, store: Store, split: str) -> Optional[str]:
        """The cached embeddings to score ``split`` from (a run trained from them, no TTA), or None."""
        key = self.run.doc.get("embedding_key")
        if not key or self.tta != "none" or key not in store.embedding_keys():
            return None
        try:
            store.embedding_shards(key, split)
        except UserError as e:
            log.info("%s: scoring from images (%s)", self.run.root, e)
            return None
        return key

    def source(self, store: Store, split: str) -> Dict[str, Any]:
        """What a split's probabilities depend on (compared before reusing a predictions file)."""
        key = self.embedding_key(store, split)
        return {"run": str(self.run.root), "checkpoint": self.checkpoint, "step": self.step, "weights": self.digest,
                "tta": self.tta, "split": split, "store": str(store.root),
                "store_fingerprint": store.fingerprint(split, self.run.feature_key),
                "input": f"embeddings {key}" if key else "images"}

    def cached(self, store: Store, split: str) -> Optional[Scored]:
        path = self.run.eval_dir(split) / "predictions.parquet"
        meta = read_meta(path) if path.exists() else None
        if not meta or meta.get("source") != self.source(store, split) or meta.get("label_ids") != self.label_ids.tolist():
            return None
        scored, _ = read_predictions(path)
        log.info("%s: reusing the probabilities of %s", self.run.root, path)
        return scored

    def check(self, store: Store, split: str, labelled: bool = False) -> Optional[np.ndarray]:
        return check_inputs(self.run, store, split, labelled)

    def score_split(self, store: Store, split: str, labelled: bool = False, progress: Hook = None,
                    reuse: bool = True) -> Scored:
        """Probabilities (and labels) of every loadable image of ``split``, streamed."""
        from .data import make_loader

        columns = self.check(store, split, labelled)
        columns = columns if labelled else None  # an unlabelled split's rows have no labels to keep
        hit = self.cached(store, split) if reuse else None
        if hit is not None:
            return hit
        args = dict(num_workers=self.workers, train=False, feature_key=self.run.feature_key, config=self.data_config,
                    device=self.device, persistent_workers=False)
        key = self.embedding_key(store, split)
        if key:
            from .embed_data import make_embedding_loader

            loader = make_embedding_loader(store, split, self.batch_size, embedding_key=key, **args)
        else:
            loader = make_loader(store, split, self.batch_size, **args)
        total = loader.dataset.plan.num_rows
        ids: List[str] = []
        probs, labels = [], []
        t0 = time.perf_counter()
        self.model.eval()
        for batch in loader:
            if not batch["image_id"]:
                continue
            if "embedding" in batch:
                probs.append(self.head_probs(batch["embedding"], batch.get("wide")).cpu().numpy())
            else:
                image = batch["image"].contiguous(memory_format=torch.channels_last)
                probs.append(self.probs(image, batch.get("wide")).cpu().numpy())
            if columns is not None:
                labels.append(batch["labels"].cpu().numpy()[:, columns].astype(np.uint8))
            ids += batch["image_id"]
            emit(progress, Progress(stage="score", done=len(ids), total=total, ok=len(ids),
                                      message=f"{len(ids) / max(1e-9, time.perf_counter() - t0):.0f} img/s"))
        seconds = time.perf_counter() - t0
        width = len(self.label_ids)
        scored = Scored(np.asarray(ids, dtype=object),
                        np.concatenate(probs) if probs else np.zeros((0, width), np.float32),
                        (np.concatenate(labels) if labels else np.zeros((0, width), np.uint8)) if columns is not None
                        else None, skipped=dict(loader.skipped), seconds=seconds)
        order = np.argsort(scored.ids.astype(str), kind="stable")  # workers interleave: a fixed order
        return Scored(scored.ids[order], scored.probs[order], None if scored.labels is None else scored.labels[order],
                      scored.skipped, seconds)

    # -- a few images --------------------------------------------------------------------------
    def batch_of(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded images (HWC uint8, as the store holds them) -> the normalised eval batch on the device."""
        transform = EvalTransform(self.data_config.size, self.data_config.crop_pct, self.data_config.interpolation)
        x = torch.from_numpy(np.stack([transform(im) for im in images])).permute(0, 3, 1, 2)
        return self.normalize(x.to(self.device)).contiguous(memory_format=torch.channels_last)

    def feature_keys(self) -> List[str]:
        """The feature configs whose wide features new images need (none without the wide part)."""
        return [self.run.feature_key] if self.run.feature_key else []

    def score_images(self, images: Sequence[np.ndarray], wide: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
        """(N, L) probabilities of decoded images; ``wide`` maps a feature key to the images' (N, D) wide
        features, needed when the run has the wide part."""
        w_all = None
        if self.run.feature_key:
            w_all = (wide or {}).get(self.run.feature_key)
            if w_all is None:
                raise UserError(f"{self.run.root}: this run has the wide part (HOG + colour features of feature "
                                f"config {self.run.feature_key}), which new images need too; pass --store with the "
                                "run's training store so they can be computed")
        out = []
        for i in range(0, len(images), self.batch_size):
            w = None if w_all is None else torch.from_numpy(np.asarray(w_all[i:i + self.batch_size], np.float32))
            out.append(self.probs(self.batch_of(images[i:i + self.batch_size]),
                                  None if w is None else w.to(self.device)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.label_ids)), np.float32)


__all__ = ["ModelScorer", "build_run_model", "resolve_device"]
