"""The research behind the default training recipe (issue 18): small, fast experiments on cached embeddings.

Every experiment reads what the real stages stored: the backbone's pooled vectors of each image
(``embeddings/<key>/<split>``, computed by the real embed stage where missing) and the labels of the
image shards. Phase 1 of LP-FT trains the heads on those vectors; ``train --deep fixed`` does it
with one ``nn.Linear`` over the vectors, BCE averaged over labels and images, timm's optimizer
(``create_optimizer_v2``) and schedule (``create_scheduler_v2``, stepped per update), validating
at each epoch's end and keeping the best. ``probe()`` here is that loop without the run folder
(no checkpoint writes, no loader processes), so a grid of hundreds of settings runs in minutes on
2 cores; ``bench_recipe.py`` and the ``check`` experiment put its figures beside ``wdr-pipe train``'s.

Experiments (``python benchmarks/recipe_lab.py EXPERIMENT --store S ...``; each prints a Markdown
table and appends JSON lines to ``--log``):

- ``grid``: optimizer x learning rate x weight decay x batch size, validation micro-F1 at 0.5 of
  the best epoch and of the last, mean over ``--seeds``;
- ``steps``: the step budget: F1 against the number of updates, for train subsets of several
  sizes, to see where it plateaus as a function of the data;
- ``lastbatch``: drop the last partial batch (today), keep it, or fit the batch size so every
  batch is full;
- ``lrfind``: wdr-pipe's range test (``wdr-pipe lr-find``: exponentially growing rate, smoothed loss)
  and where its suggestion and fastai's suggestion functions (``valley``, ``steep``, ``minimum``) on
  the same curve land against the grid's best rate;
- ``thresholds``: per-label thresholds (min positives 5 / 10 / 20) against one global
  threshold and 0.5, by out-of-fold micro-F1 (``cross_validated_gain``, repeated fold draws);
- ``check``: the same setting trained by ``wdr-pipe train --deep fixed`` and by ``probe()``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# -- data: the stored embeddings and labels ------------------------------------------------------------
@dataclass
class Split:
    ids: np.ndarray
    x: np.ndarray      # float32 (N, D)
    y: np.ndarray      # uint8 (N, L)


def embedding_key(store: Path, size: Optional[int], backbone: str = "tf_efficientnet_lite0") -> str:
    """The key of the store's embeddings of ``backbone`` (ImageNet weights) at ``size`` px, computed
    first by the real embed stage where missing."""
    from wdr_pipe.wdr.embed.stage import EmbedSpec, compute_embeddings

    res = compute_embeddings(store, EmbedSpec(backbone=backbone, pretrained=True, image_size=size),
                             ["train", "validation"])
    return res.key


def load_split(store: Path, split: str, key: str) -> Split:
    """Vectors and labels of ``split``, row for row (images whose embedding failed are left out)."""
    import pyarrow.parquet as pq

    from wdr_pipe.cache import load_labels

    ids, y = load_labels(store, split)
    rows = {str(i): r for r, i in enumerate(ids)}
    vecs, got = [], []
    for part in sorted((Path(store) / "embeddings" / key / split).glob("part-*.parquet")):
        t = pq.read_table(part, columns=["image_id", "embedding", "error"])
        ok = t.column("error").is_null().to_numpy(zero_copy_only=False)
        emb = t.column("embedding")
        dim = emb.type.list_size
        flat = emb.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        mat = np.asarray(flat, dtype=np.float32).reshape(-1, dim) if ok.all() else None
        if mat is None:
            mat = np.stack([np.asarray(v.as_py() if v.is_valid else [np.nan] * dim, np.float32) for v in emb])
        for i, image_id in enumerate(t.column("image_id").to_pylist()):
            if ok[i] and image_id in rows:
                vecs.append(mat[i])
                got.append(rows[image_id])
    got = np.asarray(got)
    return Split(np.asarray(ids)[got], np.stack(vecs).astype(np.float32), np.asarray(y)[got].astype(np.uint8))


def load_xy(store: Path, size: Optional[int]) -> Tuple[Split, Split]:
    key = embedding_key(store, size)
    return load_split(store, "train", key), load_split(store, "validation", key)


def subset(split: Split, n: int, seed: int = 0) -> Split:
    if n >= len(split.ids):
        return split
    keep = np.sort(np.random.default_rng(seed).permutation(len(split.ids))[:n])
    return Split(split.ids[keep], split.x[keep], split.y[keep])


# -- phase 1: the heads on the vectors -------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    lr: float = 3e-3
    epochs: int = 30
    batch: int = 64
    opt: str = "nadam"
    wd: float = 0.0
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    last: str = "drop"         # drop: drop_last (today); keep: a short last batch; fit: equal batches
    steps: Optional[int] = None  # a budget in updates instead of epochs (epochs = ceil(steps / per epoch))
    seed: int = 0


def batches_of(n: int, batch: int, last: str) -> List[int]:
    """The batch sizes of one epoch of ``n`` rows."""
    if last == "drop":
        return [batch] * (n // batch)
    if last == "keep":
        return [batch] * (n // batch) + ([n % batch] if n % batch else [])
    k = max(1, math.ceil(n / batch))        # fit: k batches as equal as they come
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def micro_f1(y: np.ndarray, p: np.ndarray, t=0.5) -> float:
    pred = p >= t
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    return 2 * tp / max(1, 2 * tp + fp + fn)


def probe(train: Split, val: Split, cfg: Probe, eval_every: Optional[int] = None) -> Dict:
    """Train ``nn.Linear`` on the vectors as ``train --deep fixed`` does; validate at each epoch end (and every
    ``eval_every`` updates). Returns the curve, the best and the last figures and the best epoch's scores."""
    import timm.optim
    import timm.scheduler
    import torch

    torch.manual_seed(cfg.seed)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y.astype(np.float32))
    xv = torch.from_numpy(val.x)
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    sizes = batches_of(len(x), cfg.batch, cfg.last)
    if not sizes:
        raise ValueError(f"batch {cfg.batch} > {len(x)} training rows with last=drop")
    per_epoch = len(sizes)
    epochs = math.ceil(cfg.steps / per_epoch) if cfg.steps else cfg.epochs
    opt = timm.optim.create_optimizer_v2(head, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.wd)
    sched = None
    if cfg.sched != "none":
        sched, _ = timm.scheduler.create_scheduler_v2(
            opt, sched=cfg.sched, num_epochs=epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr / 100,
            step_on_epochs=False, updates_per_epoch=per_epoch)
        sched.step_update(num_updates=0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    curve, best, step = [], (-1.0, 0, None), 0
    total = epochs * per_epoch if not cfg.steps else cfg.steps

    def evaluate():
        nonlocal best
        with torch.no_grad():
            p = torch.sigmoid(head(xv)).numpy()
        f = micro_f1(val.y, p)
        curve.append((step, f))
        if f > best[0]:
            best = (f, step, p)
        return f, p

    t0 = time.perf_counter()
    p_last = None
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        start = 0
        for b in sizes:
            idx = order[start:start + b]
            start += b
            loss = loss_fn(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if sched is not None:
                sched.step_update(num_updates=step)
            if step == total:
                break
            if eval_every and step % eval_every == 0:
                evaluate()
        f_last, p_last = evaluate()
        if step == total:
            break
    return {"curve": curve, "best_f1": best[0], "best_step": best[1], "best_probs": best[2], "last_f1": f_last,
            "last_probs": p_last, "steps": step, "per_epoch": per_epoch, "seconds": time.perf_counter() - t0,
            "head": head}


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def log_line(path: Optional[Path], doc: dict) -> None:
    if path is not None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(doc, default=float) + "\n")


# -- experiments -------------------------------------------------------------------------------------------
def exp_grid(args, train: Split, val: Split) -> None:
    lrs = [float(v) for v in args.lrs.split(",")]
    opts = args.opts.split(",")
    wds = [float(v) for v in args.wds.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    print(f"| optimizer | lr | wd | batch | steps | best epoch F1 | last F1 | mean best step |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for opt, wd, batch, lr in itertools.product(opts, wds, batches, lrs):
        res = [probe(train, val, Probe(lr=lr, epochs=args.epochs, batch=batch, opt=opt, wd=wd, seed=s,
                                       last=args.last)) for s in range(args.seeds)]
        b, l = mean_sd([r["best_f1"] for r in res]), mean_sd([r["last_f1"] for r in res])
        row = dict(exp="grid", data=args.name, opt=opt, lr=lr, wd=wd, batch=batch, epochs=args.epochs,
                   steps=res[0]["steps"], best=b, last=l, best_step=statistics.mean(r["best_step"] for r in res))
        rows.append(row)
        log_line(args.log, row)
        print(f"| {opt} | {lr:g} | {wd:g} | {batch} | {res[0]['steps']} | {b[0]:.3f} ± {b[1]:.3f} | "
              f"{l[0]:.3f} ± {l[1]:.3f} | {row['best_step']:.0f} |", flush=True)


def exp_steps(args, train: Split, val: Split) -> None:
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else [len(train.ids)]
    budgets = [int(v) for v in args.budgets.split(",")]
    print(f"{args.name}: lr {args.lr:g}, {args.opt}, batch {args.batch}, last={args.last}, {args.seeds} seeds "
          "(subset draws vary with the seed)")
    print("| train images | " + " | ".join(f"{b} steps" for b in budgets) + " |\n|---:|" + "---:|" * len(budgets))
    for n in sizes:
        cells = []
        for budget in budgets:
            res = [probe(subset(train, n, seed=s), val, Probe(lr=args.lr, batch=min(args.batch, n), opt=args.opt,
                                                              wd=args.wd, steps=budget, seed=s, last=args.last))
                   for s in range(args.seeds)]
            last = mean_sd([r["last_f1"] for r in res])
            best = mean_sd([r["best_f1"] for r in res])
            epochs = budget / res[0]["per_epoch"]
            log_line(args.log, dict(exp="steps", data=args.name, n=n, budget=budget, epochs=epochs, lr=args.lr,
                                    opt=args.opt, batch=args.batch, last=last, best=best))
            cells.append(f"{last[0]:.3f} ± {last[1]:.3f} ({epochs:.0f} ep)")
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


def exp_lastbatch(args, train: Split, val: Split) -> None:
    print(f"| last batch | batch sizes of an epoch | images seen per epoch | best F1 | last F1 |\n|---|---|---:|---:|---:|")
    for last in ("drop", "keep", "fit"):
        res = [probe(train, val, Probe(lr=args.lr, epochs=args.epochs, batch=args.batch, opt=args.opt, wd=args.wd,
                                       seed=s, last=last)) for s in range(args.seeds)]
        sizes = batches_of(len(train.ids), args.batch, last)
        b, l = mean_sd([r["best_f1"] for r in res]), mean_sd([r["last_f1"] for r in res])
        log_line(args.log, dict(exp="lastbatch", data=args.name, last=last, sizes=sizes, best=b, lastf1=l,
                                lr=args.lr, epochs=args.epochs, batch=args.batch))
        shown = f"{len(sizes)} x {sizes[0]}" if len(set(sizes)) == 1 else ", ".join(map(str, sizes))
        print(f"| {last} | {shown} | {sum(sizes)} of {len(train.ids)} | {b[0]:.3f} ± {b[1]:.3f} | "
              f"{l[0]:.3f} ± {l[1]:.3f} |", flush=True)


# -- the learning-rate range test ----------------------------------------------------------------------------
def suggestions(lrs: np.ndarray, losses: np.ndarray, num_it: int) -> Dict[str, float]:
    """fastai's own suggestion functions (``fastai.callback.schedule``) on our curve; fastai drops the
    first 10 and last 5 points before suggesting, as its ``Recorder.plot_lr_find`` does."""
    import torch
    from fastai.callback.schedule import minimum, slide, steep, valley

    lr_t, loss_t = torch.tensor(lrs[10:-5]), torch.tensor(losses[10:-5])
    out = {}
    for name, fn in (("valley", valley), ("steep", steep), ("minimum", minimum), ("slide", slide)):
        out[name] = float(fn(lr_t, loss_t, num_it)[0])
    return out


def exp_lrfind(args, train: Split, val: Split) -> None:
    """wdr-pipe's own range test (``lr_find``, the heads on the store's embeddings, ``--recipe fixed`` with this
    lab's optimizer and batch), its suggestions beside fastai's suggestion functions on the same curve."""
    import tempfile

    from wdr_pipe.wdr.train.config import TrainConfig
    from wdr_pipe.wdr.train.lr_find import lr_find

    print("| seed | points | ours (steep) | valley | steep | minimum / 10 | slide | seconds |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(store=str(args.store), out=tmp, recipe="fixed", optimizer=args.opt, batch_size=args.batch,
                              weight_decay=args.wd, image_size=args.size, seed=s, loader_workers=0)
            t0 = time.perf_counter()
            lr_find(cfg)
            secs = time.perf_counter() - t0
            doc = json.loads((Path(tmp) / "lr_find.json").read_text())
            if args.plot and s == 0:
                shutil.copy(Path(tmp) / "lr_find.png", args.plot)
        lrs, losses = np.asarray(doc["lr"]), np.asarray(doc["loss"])
        sug = suggestions(lrs, losses, doc["range"]["num_it"])
        row = dict(exp="lrfind", data=args.name, seed=s, points=len(lrs), seconds=secs, ours=doc["suggestion"],
                   **sug, lrs=lrs.tolist(), losses=losses.tolist())
        log_line(args.log, row)
        print(f"| {s} | {len(lrs)} | {doc['suggestion']:.2e} | {sug['valley']:.2e} | {sug['steep']:.2e} | "
              f"{sug['minimum']:.2e} | {sug['slide']:.2e} | {secs:.2f} |", flush=True)


# -- thresholds ---------------------------------------------------------------------------------------------------
def threshold_rules(y: np.ndarray, p: np.ndarray, fold_seeds: int = 20, folds: int = 5) -> Dict[str, Tuple[float, float]]:
    """Out-of-fold micro-F1 (mean, sd over ``fold_seeds`` fold draws) of each rule: 0.5, one global threshold,
    per label with min positives 5 / 10 / 20 (labels under it on the global one); plus in-sample figures."""
    from wdr_pipe.wdr.metrics.thresholds import cross_validated_gain, tune_thresholds

    out: Dict[str, List[float]] = {"0.5": [], "global": []}
    for m in (3, 5, 10, 20):
        out[f"per-label, min {m}"] = []
    for s in range(fold_seeds):
        for m in (3, 5, 10, 20):
            cv = cross_validated_gain(y, p, folds=folds, seed=s, min_positives=m)
            out[f"per-label, min {m}"].append(cv.f1_out_of_fold)
            if m == 5:
                out["global"].append(cv.f1_global_out_of_fold)
                out["0.5"].append(cv.f1_before)
    res = {k: mean_sd(v) for k, v in out.items()}
    for m in (3, 5, 10, 20):
        res[f"in sample, min {m}"] = (tune_thresholds(y, p, min_positives=m).f1_after, 0.0)
    return res


def exp_thresholds(args, train: Split, val: Split) -> None:
    import logging
    logging.getLogger("wdr_pipe").setLevel(logging.WARNING)
    cfg = Probe(lr=args.lr, epochs=args.epochs, batch=args.batch, opt=args.opt, wd=args.wd)
    pos = val.y.sum(axis=0)
    print(f"{args.name}: {len(val.ids)} validation images, positives per label {pos.min()}-{pos.max()} "
          f"(median {int(np.median(pos))}); models: phase-1 heads, {args.seeds} seeds; out of fold: 5 folds x "
          f"{args.fold_seeds} draws")
    table: Dict[str, List[float]] = {}
    for s in range(args.seeds):
        r = probe(train, val, Probe(**{**asdict(cfg), "seed": s}))
        for k, (m, _) in threshold_rules(val.y, r["last_probs"], args.fold_seeds).items():
            table.setdefault(k, []).append(m)
    print("| rule | micro-F1 (mean over models) |\n|---|---:|")
    for k, v in table.items():
        m = mean_sd(v)
        print(f"| {k} | {m[0]:.3f} ± {m[1]:.3f} |")
        log_line(args.log, dict(exp="thresholds", data=args.name, rule=k, f1=m, lr=args.lr, epochs=args.epochs))


# -- check: probe() against wdr-pipe train ---------------------------------------------------------------------
def exp_check(args, train: Split, val: Split) -> None:
    import subprocess
    import tempfile

    for s in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "wdr_pipe.cli", "train", "--store", str(args.store), "--out", f"{tmp}/run",
                   "--pretrained", "--deep", "fixed", "--epochs", str(args.epochs), "--lr", str(args.lr),
                   "--batch-size", str(args.batch), "--optimizer", args.opt, "--weight-decay", str(args.wd),
                   "--workers", "0", "--seed", str(s), "--json"]
            if args.size:
                cmd += ["--image-size", str(args.size)]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            wall = time.perf_counter() - t0
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            d = json.loads(out.stdout)["details"]
        r = probe(train, val, Probe(lr=args.lr, epochs=args.epochs, batch=args.batch, opt=args.opt, wd=args.wd, seed=s))
        print(f"seed {s}: wdr-pipe train {d['val_f1_at_0.5']:.3f} / {d['val_f1_tuned']:.3f} tuned ({wall:.0f} s); "
              f"probe() best {r['best_f1']:.3f} ({r['seconds']:.2f} s)", flush=True)
        log_line(args.log, dict(exp="check", data=args.name, seed=s, train=d["val_f1_at_0.5"],
                                train_tuned=d["val_f1_tuned"], wall=wall, probe=r["best_f1"]))


EXPERIMENTS = {"grid": exp_grid, "steps": exp_steps, "lastbatch": exp_lastbatch, "lrfind": exp_lrfind,
               "thresholds": exp_thresholds, "check": exp_check}


def main() -> None:
    import logging

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--name", default=None, help="the data set's name in the tables and the log")
    ap.add_argument("--size", type=int, default=None, help="image size of the embeddings [the backbone's]")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--opt", default="nadam")
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--last", default="drop", choices=["drop", "keep", "fit"])
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1")
    ap.add_argument("--opts", default="nadam,adamw,sgd")
    ap.add_argument("--wds", default="0")
    ap.add_argument("--batches", default="64")
    ap.add_argument("--sizes", default="", help="steps: train subset sizes")
    ap.add_argument("--budgets", default="25,50,100,200,400,800,1600")
    ap.add_argument("--fold-seeds", type=int, default=20)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", type=Path, default=None, help="append every row as a JSON line here")
    args = ap.parse_args()
    args.name = args.name or args.store.parent.name
    torch.set_num_threads(args.threads)
    logging.getLogger("wdr_pipe").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    train, val = load_xy(args.store, args.size)
    print(f"{args.name}: {len(train.ids)} train / {len(val.ids)} validation vectors ({train.x.shape[1]} wide, "
          f"{args.size or 'default'} px), {train.y.shape[1]} labels; loaded in {time.perf_counter() - t0:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}", flush=True)
    EXPERIMENTS[args.experiment](args, train, val)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
