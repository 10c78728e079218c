"""The evaluation report: ``RUN/eval/<split>/report.html``, one self-contained file.

``build_report(run, split)`` reads only what the stages wrote and recomputes
no metric: the evaluation folder's ``metrics.json``, per-label table and
saliency maps (``wdr-pipe evaluate``; read through ``wdr.runs.evalfiles``), the
run folder's ``config.json``, ``metrics.jsonl`` and ``thresholds.json``
(``wdr-pipe train``; ``wdr.runs.folder``), and from the store the training
split's label statistics (``wdr-pipe stats``), the label map and the fetch
failures. Figures (``figures.py``, matplotlib on Agg) are embedded as base64
PNGs, the style inline: no network, no other file. A figure whose input is
missing (no label statistics, an ensemble without training curves, no
saliency maps) is replaced by a line saying what to run.

Sits above the model side (``wdr``, for the run folder) and the store layer.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import numpy as np

from ..cache import Store, cooccurrence_matrix, failures_by_status, label_counts, label_map, open_store
from ..cache.atomic import write_text_atomic
from ..errors import UserError
from ..imaging import overlay
from ..result import StageResult
from ..wdr.runs.folder import RunFolder, open_run
from . import figures as F
from .page import render

FIGURES = ("frequency", "cooccurrence", "curves", "thresholds", "saliency", "failures")


class _Labels:
    """The per-label table of an evaluation, as the figures take it (one entry per label, column order)."""

    def __init__(self, rows: List[Dict[str, Any]]):
        self.rows = rows
        self.ids = np.array([int(r["label_id"]) for r in rows])
        self.names = [r["name"] or str(int(r["label_id"])) for r in rows]
        self.train_counts = np.array([r["train_count"] for r in rows], dtype=float)

    def column(self, key: str) -> np.ndarray:
        return np.array([r[key] for r in self.rows])

    def never_predicted(self) -> List[str]:
        return [f"{n} ({int(r['label_id'])}, {int(r['train_count'])} training images, support {int(r['support'])})"
                for n, r in zip(self.names, self.rows) if r["predicted"] == 0 and r["support"] > 0]


def build_report(run_path, split: str = "validation", store: Optional[str] = None) -> StageResult:
    """Write ``RUN/eval/<split>/report.html``; the result lists the figures embedded and those left out."""
    t0 = time.time()
    run = open_run(run_path)
    evaluation = run.evaluation(split)
    if not evaluation.exists():
        raise UserError(f"{evaluation.root}: no evaluation of split {split} yet; run 'wdr-pipe evaluate --store "
                        f"STORE --run {run.root} --split {split}' first")
    metrics = evaluation.read_metrics()
    labels = _Labels(evaluation.read_per_label())
    figs: Dict[str, bytes] = {}
    notes: Dict[str, str] = {}
    st = _store(store, metrics, notes)
    figs["frequency"] = F.frequency_vs_quality(labels.train_counts, labels.column("precision"),
                                               labels.column("recall"), labels.names)
    _cooccurrence(figs, notes, st, run, labels)
    _curves(figs, notes, run)
    _thresholds(figs, notes, run, labels)
    if evaluation.saliency.exists():
        figs["saliency"] = _saliency(evaluation.read_saliency(), dict(zip(labels.ids.tolist(), labels.names)))
    else:
        notes["saliency"] = "no saliency maps; run evaluate with --saliency N (N > 0)"
    fetch_failures = _failures(figs, notes, st)
    html = render(run=run, split=split, metrics=metrics, rows=labels.rows, figs=figs, notes=notes,
                  never=labels.never_predicted(), fetch_failures=fetch_failures)
    write_text_atomic(evaluation.report, html)
    return StageResult(stage="report", key=f"{run.name}-{split}", output=str(evaluation.report),
                       seconds=time.time() - t0, ran=1,
                       counts={"figures": len(figs), "left_out": len([k for k in FIGURES if k not in figs])},
                       details={"figures": sorted(figs), "left_out": {k: v for k, v in notes.items() if k in FIGURES},
                                "bytes": len(html)})


# -- the steps -------------------------------------------------------------------------------
def _store(store: Optional[str], metrics: Dict[str, Any], notes: Dict[str, str]) -> Optional[Store]:
    """The store named (checked), else the evaluation's own when it is readable here (a note when not)."""
    if store is not None:
        return open_store(store)
    try:
        return open_store(metrics["store"])
    except UserError as e:
        notes["store"] = f"the store is not readable here ({e})"
        return None


def _cooccurrence(figs, notes, st: Optional[Store], run: RunFolder, labels: _Labels) -> None:
    """The training split's label co-occurrence of the run's labels, grouped by the label map's tasks."""
    if st is None:
        notes["cooccurrence"] = notes["store"]
        return
    try:
        m = cooccurrence_matrix(st, run.train_split)
        space, _ = label_counts(st, run.train_split)
    except UserError:
        notes["cooccurrence"] = (f"no label statistics of split {run.train_split}; run 'wdr-pipe stats --store "
                                 f"{st.root} --split {run.train_split}'")
        return
    ids, names = labels.ids, labels.names
    pos = np.searchsorted(space, ids)
    lm = label_map(st)
    task = {int(a): (int(b), c) for a, b, c in zip(lm.labelId, lm.taskId, lm.taskName)} if lm is not None else {}
    order = sorted(range(len(ids)), key=lambda j: (task.get(int(ids[j]), (0, ""))[0], ids[j]))
    groups = [task[int(ids[j])][1] for j in order] if task else None
    figs["cooccurrence"] = F.cooccurrence(m[np.ix_(pos[order], pos[order])], [names[j] for j in order], groups)


def _curves(figs, notes, run: RunFolder) -> None:
    """The training curves of ``metrics.jsonl``."""
    curve = run.read_metrics()
    if curve:
        figs["curves"] = F.training_curves(curve)
    else:
        notes["curves"] = ("an ensemble has no training curves of its own; see its members' reports"
                           if run.kind == "ensemble" else "the run has no metrics.jsonl rows yet")


def _thresholds(figs, notes, run: RunFolder, labels: _Labels) -> None:
    """The run's tuned thresholds against each label's training frequency."""
    if not run.thresholds.exists():
        notes["thresholds"] = "the run has no thresholds.json (it did not finish): every label used 0.5"
        return
    from ..wdr.metrics.thresholds import load_thresholds

    fit = load_thresholds(run.thresholds, labels.ids)
    figs["thresholds"] = F.thresholds_vs_frequency(labels.train_counts, fit.thresholds, fit.fallback,
                                                   fit.global_threshold)


def _failures(figs, notes, st: Optional[Store]) -> Dict[str, Dict[str, int]]:
    """The store's fetch failures by split and reason."""
    if st is None:
        notes["failures"] = notes["store"]
        return {}
    fetch_failures = {s: failures_by_status(st, s) for s in st.image_splits()}
    fig = F.failures(fetch_failures)
    if fig is not None:
        figs["failures"] = fig
    else:
        notes["failures"] = "no image failed to download"
    return fetch_failures


def _saliency(z: Dict[str, Any], names: Dict[int, str]) -> bytes:
    images, maps, lids, scores, true = z["image"], z["maps"].astype(np.float32), z["label_ids"], z["scores"], z["true"]
    all_ids, image_ids = z["all_label_ids"], z["image_id"]
    overlays = np.stack([np.stack([overlay(images[i], maps[i, j]) for j in range(maps.shape[1])])
                         for i in range(len(images))])
    titles, captions = [], []
    for i in range(len(images)):
        truth = [names.get(int(t), str(t)) for t in all_ids[true[i].astype(bool)]]
        titles.append(f"{image_ids[i]}: " + (", ".join(truth[:4]) + (" ..." if len(truth) > 4 else "") or "no labels"))
        truth_ids = set(all_ids[true[i].astype(bool)].tolist())
        captions.append([f"{names.get(int(l), str(l))} {s:.2f}" + (" (true)" if int(l) in truth_ids else " (false)")
                         for l, s in zip(lids[i], scores[i])])
    return F.saliency_grid(images, overlays, titles, captions)


__all__ = ["FIGURES", "build_report"]
