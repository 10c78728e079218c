"""``evaluate(EvalConfig)``: how good a run is on a labelled split, and the files the report is built from.

The run (a training run or an ensemble) scores every loadable image of the
split (``scorer.py``: streamed through the loader, on CUDA when there is one;
``--tta flip``; ``--checkpoint best|last``), then ``metrics/scores.py`` computes, at
0.5 and at the run's tuned thresholds (``thresholds.json``): micro and macro
F1, precision and recall, mean average precision, subset accuracy and
Hamming accuracy, and the per-label table. Written to ``RUN/eval/<split>/``
(``evalfiles.py``): ``predictions.parquet``, ``saliency.safetensors`` (Grad-CAM
of a few images, ``model/saliency.py``), ``per_label.csv``, ``metrics.json``, the
report when the caller builds one (``before_commit``) and last ``result.json``,
the commit marker. The old marker and report go before anything is written, so a
kill part-way never leaves a report or a marker of another evaluation.

The tuned thresholds are the run's, tuned on its validation split without
TTA: on that split the tuned figures are in-sample (``thresholds.json`` of a
run trained with ``--thresholds cv`` and ``result.json`` hold the
out-of-fold ones), and with ``--tta flip`` or ``--checkpoint last`` they were
tuned on other probabilities. An ensemble's thresholds are tuned on its own
combined probabilities; a stack evaluated on its fit split reports its
out-of-fold probabilities.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ...cache import config_key, label_map, open_store, write_result
from ...checks import check_all
from ...errors import UserError
from ...progress import Hook
from ...result import StageResult
from ..checks import EVAL_BOUNDS, check_device
from ..metrics.scores import per_label, summary
from ..runs.evalfiles import write_predictions
from ..runs.folder import open_run
from .checks import check_inputs
from .ensemble import scorer_for

SUMMARY_KEYS = ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "macro_precision", "macro_recall",
                "mean_average_precision", "subset_accuracy", "hamming_accuracy")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    store: str
    run: str
    split: str = "validation"
    checkpoint: Optional[str] = None   # best (default) or last; an ensemble's are fixed
    tta: Optional[str] = None          # none (default) or flip
    device: str = "auto"
    batch_size: int = 64
    loader_workers: int = 2
    saliency: int = 6                  # images in the Grad-CAM grid (0: none)
    saliency_labels: int = 3           # top-scoring labels per image

    def __post_init__(self):
        check_all("evaluate config", self, EVAL_BOUNDS)
        check_device(self.device)


def label_names(store) -> Dict[int, Dict[str, Any]]:
    """label id -> ``{"name", "task", "task_id"}`` from the store's label map ({} without one)."""
    table = label_map(store)
    if table is None:
        return {}
    return {int(r.labelId): {"name": r.labelName, "task": r.taskName, "task_id": r.taskId}
            for r in table.itertuples(index=False)}


def per_label_rows(label_ids, names, train_counts, y, probs, thresholds) -> List[Dict[str, Any]]:
    tuned, half = per_label(y, probs, thresholds), per_label(y, probs, 0.5)
    rows = []
    for j, lid in enumerate(np.asarray(label_ids).tolist()):
        info = names.get(lid, {})
        rows.append({"label_id": lid, "name": info.get("name", ""), "task": info.get("task", ""),
                     "train_count": int(train_counts[j]), "support": int(tuned["support"][j]),
                     "predicted": int(tuned["predicted"][j]), "precision": float(tuned["precision"][j]),
                     "recall": float(tuned["recall"][j]), "f1": float(tuned["f1"][j]),
                     "threshold": float(tuned["threshold"][j]), "average_precision": float(tuned["average_precision"][j]),
                     "precision_at_0.5": float(half["precision"][j]), "recall_at_0.5": float(half["recall"][j]),
                     "f1_at_0.5": float(half["f1"][j])})
    return rows


def evaluate(cfg: EvalConfig, progress: Hook = None, before_commit: Optional[Callable[[], Any]] = None) -> StageResult:
    """Score ``cfg.split`` with the run and write ``RUN/eval/<split>/``; the result's details hold the metrics.
    ``before_commit``: what to make of the written files before ``result.json`` (the CLI's report)."""
    t0 = time.time()
    run = open_run(cfg.run)
    store = open_store(cfg.store)
    check_inputs(run, store, cfg.split, labelled=True)  # every input checked before a model is loaded
    scorer = scorer_for(run, cfg.checkpoint, cfg.tta, cfg.device, cfg.batch_size, cfg.loader_workers)
    thresholds, source_of_thresholds = run.read_thresholds()
    scored = scorer.score_split(store, cfg.split, labelled=True, progress=progress)
    if not len(scored.ids):
        raise UserError(f"--split {cfg.split}: no image of it could be loaded; check 'wdr-pipe store info {store.root}'")
    y, p = scored.labels, scored.probs
    at_half, tuned = summary(y, p, 0.5), summary(y, p, thresholds)
    names = label_names(store)
    rows = per_label_rows(run.label_ids, names, run.train_positives, y, p, thresholds)
    folder = run.evaluation(cfg.split)
    source = scorer.source(store, cfg.split)
    maps = None
    if cfg.saliency:  # computed before any file is written: a failure here leaves the folder as it was
        model = scorer if run.kind == "train" else scorer.members[0]
        maps = {**saliency_examples(model, store, cfg.split, cfg.saliency, cfg.saliency_labels),
                "model": str(model.run.root)}
    folder.uncommit()
    write_predictions(folder.predictions, scored, run.label_ids, thresholds, source)
    folder.write_saliency(maps)  # None: maps of an earlier evaluation would not be this one's
    folder.write_per_label(rows)
    never = [r["label_id"] for r in rows if r["predicted"] == 0 and r["support"] > 0]
    images_per_s = None if scored.reused or not scored.seconds else len(scored.ids) / scored.seconds
    doc = {"run": str(run.root), "kind": run.kind, "split": cfg.split, "store": str(store.root),
           "checkpoint": scorer.checkpoint, "tta": scorer.tta, "step": getattr(scorer, "step", None),
           "images": int(len(scored.ids)), "labels": int(len(run.label_ids)), "skipped": scored.skipped,
           "thresholds": source_of_thresholds, "micro_f1": tuned["micro_f1"], "macro_f1": tuned["macro_f1"],
           "micro_f1_at_0.5": at_half["micro_f1"], "macro_f1_at_0.5": at_half["macro_f1"],
           "at_0.5": at_half, "tuned": tuned, "labels_never_predicted": never, "images_per_s": images_per_s,
           "probabilities": ("out of fold (the stack's fit split)" if run.kind == "ensemble" and run.doc["method"] ==
                             "stack" and cfg.split == run.doc["fit"]["split"] else "model"),
           "device": str(scorer.device)}
    folder.write_metrics(doc)
    result = StageResult(
        stage="evaluate", key=config_key(cfg), output=str(folder.root), seconds=time.time() - t0, ran=0 if scored.reused else 1,
        reused=1 if scored.reused else 0, counts={"images": int(len(scored.ids)), **{k: int(v) for k, v in
                                                                                     scored.skipped.items() if v}},
        details={**{k: tuned[k] for k in SUMMARY_KEYS}, **{f"{k}_at_0.5": at_half[k] for k in SUMMARY_KEYS},
                 "thresholds": source_of_thresholds, "images_per_s": images_per_s,
                 "labels_never_predicted": len(never)})
    result.summary = summary_lines(result)
    if before_commit is not None:
        before_commit()
    write_result(folder.root, result)
    return result


def saliency_examples(scorer, store, split: str, images: int = 6, labels: int = 3) -> Dict[str, np.ndarray]:
    """Grad-CAM maps of the first ``images`` images of ``split`` for their ``labels`` top-scoring labels:
    the arrays ``saliency.safetensors`` holds (``image_id`` list, ``image`` uint8 as the model saw it, ``maps``
    float16, ``label_ids`` / ``scores`` of the maps, ``true`` multi-hot, ``all_label_ids``, ``layer`` name)."""
    import torch

    from ..data.loader import make_loader
    from ..model.saliency import grad_cam, target_layer

    columns = scorer.check(store, split)
    loader = make_loader(store, split, images, num_workers=0, train=False, feature_key=scorer.run.feature_key,
                         config=scorer.data_config, persistent_workers=False)
    batch = next(iter(loader))
    raw = batch["image"]                                                     # uint8 (B, 3, S, S)
    x = scorer.normalize(raw.to(scorer.device)).contiguous(memory_format=torch.channels_last)
    wide = batch.get("wide")
    wide = None if wide is None else wide.to(scorer.device)
    probs = scorer.probs(x, wide).cpu().numpy()
    k = min(labels, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    layer = target_layer(scorer.model.backbone)
    maps = grad_cam(scorer.model, x, wide, top.tolist(), layer)
    true = batch["labels"].numpy()[:, columns].astype(np.uint8) if columns is not None else \
        np.zeros(probs.shape, np.uint8)
    return {"image_id": [str(i) for i in batch["image_id"]], "image": raw.permute(0, 2, 3, 1).numpy(),
            "maps": maps.astype(np.float16), "label_ids": scorer.label_ids[top],
            "scores": np.take_along_axis(probs, top, axis=1).astype(np.float32), "true": true,
            "all_label_ids": scorer.label_ids, "layer": str(layer[0])}


def summary_lines(result: StageResult) -> List[str]:
    """The short summary ``wdr-pipe evaluate`` prints."""
    d = result.details
    speed = f", {d['images_per_s']:.0f} images/s" if d.get("images_per_s") else " (probabilities reused)"
    lines = [f"{result.counts.get('images', 0)} images{speed} -> {result.output}",
             f"{'':22}{'at 0.5':>9}{'tuned':>9}"]
    for k, label in (("micro_f1", "micro F1"), ("micro_precision", "micro precision"), ("micro_recall", "micro recall"),
                     ("macro_f1", "macro F1"), ("mean_average_precision", "mean AP"),
                     ("subset_accuracy", "subset accuracy"), ("hamming_accuracy", "Hamming accuracy")):
        lines.append(f"{label:22}{d[k + '_at_0.5']:9.4f}{d[k]:9.4f}")
    lines.append(f"thresholds: {d['thresholds']}; labels with support never predicted: {d['labels_never_predicted']}")
    return lines


__all__ = ["EvalConfig", "evaluate", "label_names", "per_label_rows", "saliency_examples", "summary_lines"]
