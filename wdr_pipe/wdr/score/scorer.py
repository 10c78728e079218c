"""Scoring: ``predict_loader``, the one prediction loop over a loader, and ``ModelScorer``, a trained run loaded.

``predict_loader(model, loader)`` runs the model over every batch of a
loader, in eval mode under ``torch.inference_mode`` (bf16 autocast when
asked): from the images, or from the backbone's cached embeddings through the
head alone when the loader's batches hold them (``loader.deep_key``). Under
torchrun each rank predicts its share and the shares are gathered, each image
once (the last rank's pads dropped); rows come back sorted by image id, so a
split's scores are the same whatever the workers, ranks or order. Training
validates with this very loop (and its loss per image); evaluation,
prediction, ensembles and ``wdr-pipe thresholds`` score with it.

``ModelScorer(run)``: the run's model rebuilt from ``RUN/config.json`` (its
``model_config``, the backbone created without weights: they all come from the
checkpoint, so no weights file or network is needed), loaded with the
checkpoint's evaluation weights (the EMA's when the run kept one), on CUDA
when there is one (bf16 autocast and channels_last there, as in training). A
split streams through the training loader (eval transform, the run's data
config and feature key); only probabilities are kept, never the images.
``tta="flip"`` averages the probabilities of each image and its mirror image
(the wide features are those of the image itself).

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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...cache import Store
from ...errors import UserError
from ...progress import Hook, Progress, emit
from ..data.transforms import DataConfig, EvalTransform, Normalize
from ..dist import Dist, pick_device
from ..model.network import HeadOnly
from ..runs.checkpoint import state_digest, trained_weights
from ..runs.evalfiles import Scored, read_meta, read_predictions
from ..runs.folder import RunFolder
from .checks import check_inputs

log = logging.getLogger("wdr_pipe")
TTA = ("none", "flip")


def _forward(net, x: torch.Tensor, wide: Optional[torch.Tensor], amp: bool, tta: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits, probabilities)`` of one batch; ``tta="flip"`` averages the probabilities with the mirror images'."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(x, wide).float()
        flipped = net(torch.flip(x, dims=[3]), wide).float() if tta == "flip" else None
    p = torch.sigmoid(logits)
    return logits, p if flipped is None else (p + torch.sigmoid(flipped)) / 2


@torch.inference_mode()
def predict_loader(model, loader, *, labelled: bool = True, columns: Optional[np.ndarray] = None, amp: bool = False,
                   tta: str = "none", criterion=None, dist: Optional[Dist] = None, progress: Hook = None) -> Scored:
    """Probabilities of every image of ``loader``'s split (module doc), with its labels (``labelled``; the
    store columns ``columns`` of them, all when None) and, given a ``criterion``, its loss."""
    net = HeadOnly(model) if loader.deep_key == "embedding" else model
    tta = tta if loader.deep_key == "image" else "none"
    model.eval()
    ids: List[str] = []
    probs, labels, losses = [], [], []
    total = loader.dataset.layout.num_rows
    t0 = time.perf_counter()
    for batch in loader:
        if not batch["image_id"]:
            continue
        x = batch[loader.deep_key]
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits, p = _forward(net, x, batch.get("wide"), amp, tta)
        probs.append(p.cpu())
        y = batch["labels"][:, columns] if columns is not None else batch["labels"]
        if labelled:
            labels.append(y.to(torch.uint8).cpu())
        if criterion is not None:
            losses.append(criterion.per_image(logits, y).cpu())
        ids += batch["image_id"]
        emit(progress, Progress(stage="score", done=len(ids), total=total, ok=len(ids),
                                message=f"{len(ids) / max(1e-9, time.perf_counter() - t0):.0f} img/s"))
    seconds = time.perf_counter() - t0
    width = model.num_labels
    cat = lambda xs, dtype: torch.cat(xs).numpy() if xs else np.zeros((0, width), dtype)  # noqa: E731
    local = (ids, cat(probs, np.float32), cat(labels, np.uint8) if labelled else None,
             torch.cat(losses).numpy() if losses else (np.zeros(0, np.float32) if criterion is not None else None))
    parts = dist.gather(local) if dist is not None else [local]
    all_ids = np.array([i for part in parts for i in part[0]], dtype=object)
    _, rows = np.unique(all_ids.astype(str), return_index=True)  # sorted by id; each image once (ranks pad)
    merged = [None if part0 is None else np.concatenate([part[j] for part in parts])[rows]
              for j, part0 in ((1, parts[0][1]), (2, parts[0][2]), (3, parts[0][3]))]
    return Scored(all_ids[rows], merged[0], merged[1], skipped=dict(loader.skipped), seconds=seconds, loss=merged[2])


def build_run_model(run: RunFolder, state: Dict[str, torch.Tensor]):
    """The run's ``WDRModel`` with ``state`` loaded (no weights file, no network)."""
    from ..model.backbone import create_backbone
    from ..model.network import ModelConfig, WDRModel

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

    def __init__(self, run: RunFolder, checkpoint: str = "best", tta: str = "none", device: str = "auto",
                 batch_size: int = 64, loader_workers: int = 2):
        if tta not in TTA:
            raise UserError(f"--tta {tta}: use one of {', '.join(TTA)}")
        if batch_size < 1 or loader_workers < 0:
            raise UserError(f"--batch-size {batch_size} --loader-workers {loader_workers}: use a batch of 1 or more, "
                            "0 or more workers")
        self.run, self.checkpoint, self.tta = run, checkpoint, tta
        self.batch_size, self.loader_workers = int(batch_size), int(loader_workers)
        path = run.checkpoint(checkpoint)
        trained = trained_weights(path)
        if trained.label_ids != run.label_ids.tolist():
            raise UserError(f"{path}: its label ids differ from {run.config}'s; the run folder was changed by "
                            "hand: train it again")
        self.step = trained.step
        self.digest = state_digest(trained.state)[:16]
        self.device = pick_device(device)
        self.amp = self.device.type == "cuda"
        self.model = build_run_model(run, trained.state).to(self.device, memory_format=torch.channels_last)
        self.data_config = DataConfig.from_dict(run.doc["data_config"])
        self.normalize = Normalize.from_config(self.data_config).to(self.device)
        self.label_ids = run.label_ids

    @torch.inference_mode()
    def probs(self, image: torch.Tensor, wide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L) float32 probabilities of a normalised batch of images on the device (TTA applied)."""
        return _forward(self.model, image, wide, self.amp, self.tta)[1]

    @torch.inference_mode()
    def head_probs(self, embedding: torch.Tensor, wide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L) probabilities from the backbone's pooled vectors (the head alone), as a run that trained
        from cached embeddings scores them."""
        return _forward(HeadOnly(self.model), embedding.float(), wide, self.amp, "none")[1]

    # -- a store split ------------------------------------------------------------------------
    def embedding_key(self, store: Store, split: str) -> Optional[str]:
        """The cached embeddings to score ``split`` from (a run trained from them, no TTA), or None."""
        key = self.run.doc.get("embedding_key")
        if not key or self.tta != "none" or key not in store.embeddings.keys():
            return None
        try:
            store.embeddings.shards(key, split)
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
        path = self.run.evaluation(split).predictions
        meta = read_meta(path) if path.exists() else None
        if not meta or meta.get("source") != self.source(store, split) or meta.get("label_ids") != self.label_ids.tolist():
            return None
        scored, _ = read_predictions(path, f"delete it, or evaluate the split {split} again")
        log.info("%s: reusing the probabilities of %s", self.run.root, path)
        return scored

    def check(self, store: Store, split: str, labelled: bool = False) -> Optional[np.ndarray]:
        return check_inputs(self.run, store, split, labelled)

    def score_split(self, store: Store, split: str, labelled: bool = False, progress: Hook = None,
                    reuse: bool = True) -> Scored:
        """Probabilities (and labels) of every loadable image of ``split``, streamed."""
        from ..data.loader import make_loader

        columns = self.check(store, split, labelled)
        hit = self.cached(store, split) if reuse else None
        if hit is not None:
            return hit
        loader = make_loader(store, split, self.batch_size, self.loader_workers, train=False,
                             feature_key=self.run.feature_key, embedding_key=self.embedding_key(store, split),
                             config=self.data_config, device=self.device, persistent_workers=False)
        return predict_loader(self.model, loader, labelled=labelled, columns=columns, amp=self.amp, tta=self.tta,
                              progress=progress)

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
        features (``data.wide.photo_wide``), needed when the run has the wide part."""
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


__all__ = ["ModelScorer", "TTA", "build_run_model", "predict_loader"]
