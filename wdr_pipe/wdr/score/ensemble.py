"""Ensembles of trained runs (``wdr-pipe ensemble``), and ``scorer_for``: any run folder -> its scorer.

``make_ensemble(EnsembleConfig)`` scores every member on the fit split
(validation by default; probabilities are reused from a member's
``eval/<split>/predictions.parquet`` when they match) and writes a run folder
that ``evaluate`` and ``predict`` accept like a training run's:

- ``mean`` (the WDR paper's "Ensembled" row): the members' probabilities are
  averaged and per-label thresholds are tuned on the average.
- ``stack`` (as the FGVC5 winners did): per label j, a logistic regression
  (scikit-learn, L2, ``C``) over the members' logits ``log(p / (1 - p))`` of
  label j, fitted on the fit split by k-fold cross-validation: every image's
  stacked probability comes from the model fitted without its fold
  (out of fold), thresholds are tuned on those, and the models refitted on the
  whole split are the ones kept for other splits. A label without both
  classes in a fold's training part keeps the members' mean there.
  Evaluating a stack on its own fit split reports the out-of-fold
  probabilities (stored in ``stack_oof.parquet``), never the in-sample fit.

Folder: ``config.json`` (kind ``wdr-pipe ensemble run``, members with their
checkpoint, step and weights digest, label ids, the store), ``thresholds.json``,
``stacker.safetensors`` (stack: ``coef`` (L, M), ``intercept`` (L,), ``fitted`` (L,)),
``stack_oof.parquet``, and ``result.json`` last. Members must share their
label space; an image that some member could not score (failed wide features)
is left out of the fit and, when scored, gets the mean of the members that did.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...cache import Store, image_rows, open_store
from ...cache.keys import canonical_json
from ...cache.atomic import write_bytes_atomic
from ...checks import check_all
from ...errors import UserError
from ...progress import Hook
from ...result import StageResult
from ..checks import ENSEMBLE_BOUNDS, check_device
from ..runs.evalfiles import Scored, read_predictions, write_predictions
from ..runs.folder import CHECKPOINTS, RunFolder, open_run
from ..runs.outputs import check_run_out
from .scorer import TTA, ModelScorer

log = logging.getLogger("wdr_pipe")
METHODS = ("mean", "stack")
EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def combine(method: str, probs: np.ndarray, stacker: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
    """(M, N, L) member probabilities (NaN where a member did not score an image) -> (N, L)."""
    mean = np.nanmean(probs, axis=0)
    if method == "mean":
        return mean.astype(np.float32)
    z = np.einsum("mnl,lm->nl", _logit(np.nan_to_num(probs, nan=0.5)), stacker["coef"]) + stacker["intercept"]
    out = np.where(stacker["fitted"][None, :], _sigmoid(z), mean)
    missing = np.isnan(probs).any(axis=0)
    return np.where(missing, mean, out).astype(np.float32)


def fit_stacker(probs: np.ndarray, y: np.ndarray, C: float = 1.0) -> Dict[str, np.ndarray]:
    """Per-label logistic regressions over the members' logits: ``coef`` (L, M), ``intercept``, ``fitted``."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise UserError("--method stack needs scikit-learn; run `pip install scikit-learn`") from None
    m, _, labels = probs.shape
    coef, intercept, fitted = np.zeros((labels, m)), np.zeros(labels), np.zeros(labels, bool)
    x = _logit(probs)
    for j in range(labels):
        if 0 < y[:, j].sum() < len(y):
            lr = LogisticRegression(C=C, max_iter=1000).fit(x[:, :, j].T, y[:, j])
            coef[j], intercept[j], fitted[j] = lr.coef_[0], lr.intercept_[0], True
    return {"coef": coef, "intercept": intercept, "fitted": fitted}


def out_of_fold(probs: np.ndarray, y: np.ndarray, folds: int, seed: int, C: float = 1.0) -> np.ndarray:
    """(N, L) stacked probabilities, each image's from the stacker fitted on the other folds."""
    n = y.shape[0]
    if not 2 <= folds <= n:
        raise UserError(f"--folds {folds}: use 2 to the {n} images of the fit split")
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = np.zeros(y.shape, np.float32)
    for f in range(folds):
        held = fold == f
        stacker = fit_stacker(probs[:, ~held], y[~held], C)
        out[held] = combine("stack", probs[:, held], stacker)
    return out


# -- scoring an ensemble ------------------------------------------------------------------------
def align(parts: Sequence[Scored]) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Members' scores of one split -> (ids: every image any member scored, sorted; (M, N, L) probs with
    NaN where a member has no score; labels from the members that have the image)."""
    ids = np.array(sorted(set().union(*[set(p.ids.tolist()) for p in parts])), dtype=object)
    probs = np.full((len(parts), len(ids), parts[0].probs.shape[1]), np.nan, np.float32)
    labels = None if parts[0].labels is None else np.zeros(probs.shape[1:], np.uint8)
    for m, part in enumerate(parts):
        rows = np.searchsorted(ids.astype(str), part.ids.astype(str))
        probs[m, rows] = part.probs
        if labels is not None and part.labels is not None:
            labels[rows] = part.labels
    return ids, probs, labels


class EnsembleScorer:
    """An ensemble run folder, loaded: its members' scorers and how it combines them."""

    def __init__(self, run: RunFolder, device: str = "auto", batch_size: int = 64, loader_workers: int = 2):
        self.run, self.method = run, run.doc["method"]
        self.label_ids = run.label_ids
        self.members = []
        for m in run.doc["members"]:
            member = open_run(m["path"], flag=f"{run.root}: member")
            scorer = ModelScorer(member, m["checkpoint"], m["tta"], device, batch_size, loader_workers)
            if scorer.digest != m["weights"]:
                raise UserError(f"{member.root}: its {m['checkpoint']} checkpoint changed since the ensemble "
                                f"{run.root} was made; make the ensemble again")
            self.members.append(scorer)
        self.stacker = None
        if self.method == "stack":
            self.stacker = run.read_stacker()
        self.checkpoint, self.tta, self.device = "members'", "members'", self.members[0].device

    def feature_keys(self) -> List[str]:
        return sorted({k for s in self.members for k in s.feature_keys()})

    def check(self, store: Store, split: str, labelled: bool = False):
        return [s.check(store, split, labelled) for s in self.members][0]

    def source(self, store: Store, split: str) -> Dict[str, Any]:
        return {"run": str(self.run.root), "method": self.method, "members": [s.source(store, split) for s in self.members]}

    def score_split(self, store: Store, split: str, labelled: bool = False, progress: Hook = None,
                    reuse: bool = True) -> Scored:
        t0 = time.perf_counter()
        parts = [s.score_split(store, split, labelled, progress, reuse) for s in self.members]
        ids, probs, labels = align(parts)
        combined = Scored(ids, combine(self.method, probs, self.stacker), labels,
                          skipped=parts[0].skipped, seconds=time.perf_counter() - t0)
        fit = self.run.doc["fit"]
        if self.method == "stack" and split == fit["split"] and store.fingerprint(split) == fit["store_fingerprint"]:
            oof, _ = read_predictions(self.run.stack_oof,
                                      "make the ensemble again ('wdr-pipe ensemble ... --out NEW')")
            have = np.isin(combined.ids.astype(str), oof.ids.astype(str))
            combined.probs[have] = oof.take(combined.ids[have]).probs
            log.info("%s: split %s is the stack's fit split: out-of-fold probabilities", self.run.root, split)
        return combined

    def score_images(self, images, wide: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
        probs = np.stack([s.score_images(images, wide) for s in self.members])
        return combine(self.method, probs, self.stacker)


def scorer_for(run: RunFolder, checkpoint: Optional[str] = None, tta: Optional[str] = None, device: str = "auto",
               batch_size: int = 64, loader_workers: int = 2):
    """The scorer of any run folder (``checkpoint`` / ``tta`` None: best / none, or the ensemble's own)."""
    if run.kind == "ensemble":
        if checkpoint not in (None, "best") or tta not in (None, "none"):
            raise UserError(f"--run {run.root}: an ensemble's members' checkpoint and TTA were fixed when it was made; "
                            "drop --checkpoint / --tta, or make the ensemble again with them")
        return EnsembleScorer(run, device, batch_size, loader_workers)
    return ModelScorer(run, checkpoint or "best", tta or "none", device, batch_size, loader_workers)


# -- making one ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    runs: Tuple[str, ...]
    out: str
    method: str = "mean"
    store: Optional[str] = None      # default: the first member's training store
    split: str = "validation"        # the fit split: thresholds (and the stacker) are tuned on it
    folds: int = 5
    seed: int = 0
    C: float = 1.0
    min_positives: int = 5
    checkpoint: str = "best"
    tta: str = "none"
    device: str = "auto"
    batch_size: int = 64
    loader_workers: int = 2

    def key(self) -> str:
        """The ensemble's cache key: the hash of its fields (as ``cache.config_key``), ``loader_workers`` hashed under its
        earlier name ``workers`` so that ensembles made before the rename are still recognised as done."""
        doc = {"type": type(self).__name__, **dataclasses.asdict(self)}
        doc["workers"] = doc.pop("loader_workers")
        return hashlib.sha256(canonical_json([doc, []]).encode()).hexdigest()[:12]

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(str(r) for r in self.runs))
        if len(self.runs) < 2:
            raise UserError(f"ensemble of {len(self.runs)} run(s): pass two runs or more")
        for flag, value, choices in (("--method", self.method, METHODS), ("--checkpoint", self.checkpoint, CHECKPOINTS),
                                     ("--tta", self.tta, TTA)):
            if value not in choices:
                raise UserError(f"{flag} {value}: use one of {', '.join(choices)}")
        check_all("ensemble config", self, ENSEMBLE_BOUNDS)
        check_device(self.device)


def _members(cfg: EnsembleConfig) -> List[RunFolder]:
    runs = [open_run(r, flag="RUN") for r in cfg.runs]
    for r in runs:
        if r.kind == "ensemble":
            raise UserError(f"RUN {r.root}: an ensemble; pass training runs (their ensemble is made in one go)")
    if len({str(r.root) for r in runs}) < len(runs):
        raise UserError("RUN...: the same run twice; pass each run once")
    first = runs[0]
    for r in runs[1:]:
        if r.label_ids.tolist() != first.label_ids.tolist() or r.space_size != first.space_size:
            raise UserError(f"RUN {r.root} predicts {len(r.label_ids)} labels of a space of {r.space_size} "
                            f"({r.settings.get('labels', 'all')}), RUN {first.root} {len(first.label_ids)} of "
                            f"{first.space_size} ({first.settings.get('labels', 'all')}): members of an ensemble "
                            "must be trained on the same label space; ensemble runs of the same store and --labels")
    return runs


def _finished(cfg: EnsembleConfig, out: Path) -> Optional[StageResult]:
    """The stored result when ``out`` holds this very ensemble (same settings), made after its
    members last finished; None when there is none. Members trained since: a one-line error."""
    folder = RunFolder(out)
    done = folder.result_if_finished()
    if done is None or done.stage != "ensemble" or done.key != cfg.key():
        return None
    made = folder.result.stat().st_mtime
    newer = [r for r in cfg.runs if RunFolder(r).finished and RunFolder(r).result.stat().st_mtime > made]
    if newer:
        raise UserError(f"--out {out}: an ensemble of runs that changed since ({', '.join(newer)}); "
                        "pass a new --out for the new ensemble")
    log.info("%s: this ensemble is already made; nothing to do", out)
    done.reused, done.ran, done.seconds = done.ran, 0, 0.0
    return done


def make_ensemble(cfg: EnsembleConfig, progress: Hook = None) -> StageResult:
    """Score the members on the fit split, combine, tune, and write the ensemble run folder."""
    from ..metrics.scores import summary
    from ..metrics.thresholds import cross_validated_gain, save_thresholds, tune_thresholds

    t0 = time.time()
    out = check_run_out(cfg.out)  # not a store, nor inside one or another run
    done = _finished(cfg, out)
    if done is not None:
        return done
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; pass a new folder for the ensemble")
    runs = _members(cfg)
    store = open_store(cfg.store or runs[0].store_path)
    scorers = [ModelScorer(r, cfg.checkpoint, cfg.tta, cfg.device, cfg.batch_size, cfg.loader_workers) for r in runs]
    parts = [s.score_split(store, cfg.split, labelled=True, progress=progress) for s in scorers]
    ids, probs, y = align(parts)
    complete = ~np.isnan(probs).any(axis=(0, 2))
    ids, probs, y = ids[complete], probs[:, complete], y[complete]
    members_f1 = [summary(y, p, 0.5)["micro_f1"] for p in probs]
    stacker, oof = None, None
    if cfg.method == "mean":
        fused = combine("mean", probs)
    else:
        oof = out_of_fold(probs, y, min(cfg.folds, len(ids)), cfg.seed, cfg.C)
        stacker = fit_stacker(probs, y, cfg.C)
        fused = oof
    fit = tune_thresholds(y, fused, min_positives=cfg.min_positives)
    cv = cross_validated_gain(y, fused, folds=min(5, len(ids)), seed=cfg.seed, min_positives=cfg.min_positives)
    first = runs[0]
    fingerprint = store.fingerprint(cfg.split)
    folder = RunFolder(out)
    doc = {"method": cfg.method,
           "members": [{"path": str(r.root), "name": r.name, "checkpoint": cfg.checkpoint, "tta": cfg.tta,
                        "step": s.step, "weights": s.digest} for r, s in zip(runs, scorers)],
           "labels": {"ids": first.label_ids.tolist(), "of": first.space_size,
                      "train_positives": first.train_positives.tolist()},
           "store": {"path": str(store.root)}, "feature_key": None,
           "fit": {"split": cfg.split, "store_fingerprint": fingerprint, "images": int(len(ids)), "folds": cfg.folds,
                   "seed": cfg.seed, "C": cfg.C},
           "train_images": image_rows(store, first.train_split) if store.image_shards(first.train_split) else 0,
           "settings": {"method": cfg.method, "members": ",".join(r.name for r in runs), "checkpoint": cfg.checkpoint,
                        "tta": cfg.tta, "train_split": first.train_split, "val_split": cfg.split}}
    if stacker is not None:
        folder.write_stacker(stacker)
        write_predictions(folder.stack_oof, Scored(ids, oof, y), first.label_ids, fit.thresholds,
                          {"split": cfg.split, "store_fingerprint": fingerprint, "out_of_fold": True})
    save_thresholds(folder.thresholds, first.label_ids, fit)
    folder.write_config(doc, kind="ensemble")
    result = StageResult(
        stage="ensemble", key=cfg.key(), output=str(out), seconds=time.time() - t0, ran=len(runs),
        counts={"members": len(runs), "images": int(len(ids))},
        details={"method": cfg.method, "fit_split": cfg.split, "members_val_f1_at_0.5": members_f1,
                 "val_f1_at_0.5": fit.f1_before, "val_f1_tuned": fit.f1_after,
                 "val_f1_tuned_out_of_fold": cv.f1_out_of_fold,
                 "probabilities": "out of fold (stacked)" if cfg.method == "stack" else "mean of the members"},
        summary=[f"{cfg.split} micro-F1: members at 0.5 {', '.join(f'{f:.4f}' for f in members_f1)}; ensemble "
                 f"({cfg.method}) {fit.f1_before:.4f} at 0.5, {fit.f1_after:.4f} tuned, {cv.f1_out_of_fold:.4f} tuned "
                 "out of fold"])
    folder.write_result(result)
    return result


__all__ = ["EnsembleConfig", "EnsembleScorer", "METHODS", "align", "combine", "fit_stacker", "make_ensemble",
           "out_of_fold", "scorer_for"]
