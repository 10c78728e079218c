"""The evaluation report: ``RUN/eval/<split>/report.html``, one self-contained file.

``build_report(run, split)`` reads only what the stages wrote and recomputes
no metric: ``eval/<split>/metrics.json``, ``per_label.csv`` and
``saliency.npz`` (``wdr-pipe evaluate``), the run's ``config.json``,
``metrics.jsonl`` and ``thresholds.json`` (``wdr-pipe train``), and from the
store the training split's label statistics (``wdr-pipe stats``), the label
map and the fetch failures. Figures (``figures.py``, matplotlib on Agg) are
embedded as base64 PNGs, the style inline: no network, no other file. A
figure whose input is missing (no label statistics, an ensemble without
training curves, no saliency maps) is replaced by a line saying what to run.

Sits above the model side (``wdr``, for the run folder) and the store layer.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..cache import cooccurrence_matrix, failures_by_status, label_counts, label_map, open_store
from ..cache.atomic import write_text_atomic
from ..errors import UserError
from ..result import StageResult
from ..wdr.runs import open_run
from . import figures as F
from .page import render

FIGURES = ("frequency", "cooccurrence", "curves", "thresholds", "saliency", "failures")


def _float(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def read_per_label(path: Path) -> List[Dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (_float(v) if k not in ("name", "task") else v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def build_report(run_path, split: str = "validation", store: Optional[str] = None) -> StageResult:
    """Write ``RUN/eval/<split>/report.html``; the result lists the figures embedded and those left out."""
    t0 = time.time()
    run = open_run(run_path)
    folder = run.eval_dir(split)
    if not (folder / "metrics.json").exists():
        raise UserError(f"{folder}: no evaluation of split {split} yet; run 'wdr-pipe evaluate --store STORE --run "
                        f"{run.root} --split {split}' first")
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    rows = read_per_label(folder / "per_label.csv")
    ids = np.array([int(r["label_id"]) for r in rows])
    names = [r["name"] or str(int(r["label_id"])) for r in rows]
    counts = np.array([r["train_count"] for r in rows], dtype=float)
    figs: Dict[str, bytes] = {}
    notes: Dict[str, str] = {}
    if store is not None:  # a store named is checked; the evaluation's own may have moved (a note then)
        st = open_store(store)
    else:
        try:
            st = open_store(metrics["store"])
        except UserError as e:
            st, notes["store"] = None, f"the store is not readable here ({e})"

    figs["frequency"] = F.frequency_vs_quality(counts, np.array([r["precision"] for r in rows]),
                                               np.array([r["recall"] for r in rows]), names)
    never = [f"{n} ({int(r['label_id'])}, {int(r['train_count'])} training images, support {int(r['support'])})"
             for n, r in zip(names, rows) if r["predicted"] == 0 and r["support"] > 0]

    if st is not None:
        try:
            m = cooccurrence_matrix(st, run.train_split)
            space, _ = label_counts(st, run.train_split)
            pos = np.searchsorted(space, ids)
            lm = label_map(st)
            task = ({int(a): (int(b), c) for a, b, c in zip(lm.labelId, lm.taskId, lm.taskName)}
                    if lm is not None else {})
            order = sorted(range(len(ids)), key=lambda j: (task.get(int(ids[j]), (0, ""))[0], ids[j]))
            groups = [task[int(ids[j])][1] for j in order] if task else None
            figs["cooccurrence"] = F.cooccurrence(m[np.ix_(pos[order], pos[order])], [names[j] for j in order], groups)
        except UserError:
            notes["cooccurrence"] = (f"no label statistics of split {run.train_split}; run 'wdr-pipe stats --store "
                                     f"{st.root} --split {run.train_split}'")
    else:
        notes["cooccurrence"] = notes["store"]

    curve = run.dir.read_metrics()
    if curve:
        figs["curves"] = F.training_curves(curve)
    else:
        notes["curves"] = ("an ensemble has no training curves of its own; see its members' reports"
                           if run.kind == "ensemble" else "the run has no metrics.jsonl rows yet")

    if run.dir.thresholds.exists():
        from ..wdr.thresholds import load_thresholds

        fit = load_thresholds(run.dir.thresholds, ids)
        figs["thresholds"] = F.thresholds_vs_frequency(counts, fit.thresholds, fit.fallback, fit.global_threshold)
    else:
        notes["thresholds"] = "the run has no thresholds.json (it did not finish): every label used 0.5"

    sal = folder / "saliency.npz"
    if sal.exists():
        figs["saliency"] = _saliency(sal, dict(zip(ids.tolist(), names)))
    else:
        notes["saliency"] = "no saliency maps; run evaluate with --saliency N (N > 0)"

    fetch_failures: Dict[str, Dict[str, int]] = {}
    if st is not None:
        fetch_failures = {s: failures_by_status(st, s) for s in st.image_splits()}
        fig = F.failures(fetch_failures)
        if fig is not None:
            figs["failures"] = fig
        else:
            notes["failures"] = "no image failed to download"
    else:
        notes["failures"] = notes["store"]

    html = render(run=run, split=split, metrics=metrics, rows=rows, figs=figs, notes=notes, never=never,
                  fetch_failures=fetch_failures)
    out = folder / "report.html"
    write_text_atomic(out, html)
    result = StageResult(stage="report", key=f"{run.name}-{split}", output=str(out), seconds=time.time() - t0, ran=1,
                         counts={"figures": len(figs), "left_out": len([k for k in FIGURES if k not in figs])},
                         details={"figures": sorted(figs), "left_out": {k: v for k, v in notes.items() if k in FIGURES},
                                  "bytes": len(html)})
    return result


def _saliency(path: Path, names: Dict[int, str]) -> bytes:
    with np.load(path) as z:
        images, maps, lids, scores, true = z["image"], z["maps"].astype(np.float32), z["label_ids"], z["scores"], z["true"]
        all_ids, image_ids = z["all_label_ids"], z["image_id"]
    overlays = np.stack([np.stack([F.overlay(images[i], maps[i, j]) for j in range(maps.shape[1])])
                         for i in range(len(images))])
    titles, captions = [], []
    for i in range(len(images)):
        truth = [names.get(int(t), str(t)) for t in all_ids[true[i].astype(bool)]]
        titles.append(f"{image_ids[i]}: " + (", ".join(truth[:4]) + (" ..." if len(truth) > 4 else "") or "no labels"))
        truth_ids = set(all_ids[true[i].astype(bool)].tolist())
        captions.append([f"{names.get(int(l), str(l))} {s:.2f}" + (" (true)" if int(l) in truth_ids else " (false)")
                         for l, s in zip(lids[i], scores[i])])
    return F.saliency_grid(images, overlays, titles, captions)


__all__ = ["FIGURES", "build_report", "read_per_label"]
