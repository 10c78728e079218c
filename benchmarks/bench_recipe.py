"""The default training recipe against a linear probe and fastai, side by side, on three data sets (issue 18).

Data sets (``--sets``), each a store written by the real stages and kept under ``--out/<set>/``:

- ``demo``: the demo's generated garment photos (``wdr_pipe.demo``: 480 train / 120 validation, drawn
  600-1000 px from seed 0, stored at a 160 px shorter side, 24 labels);
- ``photos``: real photographs shipped inside installed packages (``photos.py``: 224 / 48 crops,
  16 labels of our own, stored at 256 px);
- ``demo10``: the demo's generator at ten times its size (4,800 / 1,200).

``--demo``, ``--photos`` and ``--demo10`` take ``TRAIN,VAL`` to change the sizes (a tiny smoke run).

Rows (``--rows``), each trained from scratch in this invocation, on the same store:

- ``default``: ``wdr-pipe train --store S --out R`` and nothing else, whatever the default is on this
  checkout. It runs on a copy of the store without its ``embeddings/`` folder, so its wall time
  includes any embedding it needs, as a new user's would.
- ``single``: today's single phase with today's defaults passed explicitly (``--deep tune --epochs 10
  --lr 3e-4 --batch-size 64 --optimizer nadam``..., plus ``--recipe single`` and ``--no-pretrained``
  where this checkout has those flags). Where its settings equal the default row's (today's code),
  the default row's figures are shown and it is not trained twice.
- ``oracle``, ``oracle-wide``: scikit-learn ``LogisticRegression`` (lbfgs), one-vs-rest, on the store's
  cached embeddings (the backbone's ImageNet weights at the default row's image size, computed by the real
  embed stage); ``-wide`` adds the store's HOG and colour histograms, standardised on the train split as
  the Wide part does. C is chosen per label by 3-fold cross-validation on the training split among
  0.1, 1 and 10 (``LogisticRegressionCV``, log loss); ``--oracle-c 1`` fixes it (scikit-learn's default).
- ``fastai``: fastai's ``vision_learner`` + ``fine_tune`` at its default rate (``base_lr`` 2e-3, one
  frozen epoch), the same stored images (decoded from the store's shards), the same ImageNet weights
  (the lite0 file wdr-pipe converts, handed to timm through ``pretrained_cfg_overlay``), the default
  row's image size and as many epochs over the images in all (``fine_tune(E - 1, freeze_epochs=1)``, E the
  default row's epochs, for lp-ft its fine-tune's plus one: ``image_epochs``; ``--fastai-epochs``).
  fastai's own data pipeline otherwise: ``Resize`` then ``aug_transforms()``, batch 64, its head.
- ``fastai-lrfind``: the same with ``base_lr`` from its ``lr_find()`` (``valley``), as a fastai user does.

Each row: validation micro-F1 at 0.5, tuned (per-label thresholds on the validation split, in sample,
``wdr_pipe.wdr.metrics.thresholds.tune_thresholds`` for every row alike), out of fold (5-fold
``cross_validated_gain``: the honest figure of those thresholds) and wall time. Wall times are of the
row's own work (a ``wdr-pipe`` row: the whole command, process start included; the oracle: the fits;
fastai: learner, training and prediction); the store's one-off embedding (used by the oracle rows) is
timed on its own line. Rows run one after another on a shared machine: see the load average printed.

    python benchmarks/bench_recipe.py --out /tmp/recipe                      # demo and photos, every row
    python benchmarks/bench_recipe.py --out /tmp/recipe --sets demo10 --rows default,oracle,oracle-wide
    python benchmarks/bench_recipe.py --out /tmp/smoke --demo 48,24 --photos 48,24 --sets demo,photos \\
        --train-flags "--epochs 1 --image-size 64 --batch-size 16" --fastai-epochs 2 --fastai-batch 16 --oracle-c 1
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS = ("default", "single", "oracle", "oracle-wide", "fastai", "fastai-lrfind")
# today's (a6ca635) defaults of the single phase, passed explicitly
SINGLE = {"deep": "tune", "epochs": 10, "lr": 3e-4, "batch_size": 64, "optimizer": "nadam", "weight_decay": 0.0,
          "sched": "cosine", "warmup_epochs": 0.0, "image_size": None}


# -- the data sets ------------------------------------------------------------------------------------------
def build_set(name: str, out: Path, sizes: Tuple[int, int]) -> Path:
    n_train, n_val = sizes
    root = out / name
    if name == "photos":
        from photos import photo_store

        return photo_store(root, n_train, n_val)
    from stores import generated_store

    store = root / "store"
    if (store / "stats" / "train" / "config.json").exists():
        return store
    t = time.perf_counter()
    print(f"{name}: drawing {n_train} + {n_val} garment photos and building the store under {root} ...", flush=True)
    generated_store(store, root / "data", {"train": n_train, "validation": n_val}, seed=0, size=160, shard_size=500)
    print(f"{name}: store built in {time.perf_counter() - t:.0f} s", flush=True)
    return store


def store_without_embeddings(store: Path, where: Path) -> Path:
    """A copy of ``store`` without ``embeddings/``: what a user has after fetch, features and stats."""
    copy = where / "store"
    shutil.copytree(store, copy, ignore=lambda d, names: ["embeddings"] if Path(d) == store else [])
    return copy


# -- scoring -------------------------------------------------------------------------------------------------
def figures(y: np.ndarray, p: np.ndarray) -> Dict[str, float]:
    """micro-F1 at 0.5, tuned per label (in sample) and out of fold, as wdr-pipe's trainer computes them."""
    import logging

    from wdr_pipe.wdr.metrics.thresholds import cross_validated_gain

    logging.getLogger("wdr_pipe").setLevel(logging.WARNING)
    cv = cross_validated_gain(y, p, folds=min(5, len(y)), seed=0)
    return {"f1": cv.f1_before, "tuned": cv.f1_in_sample, "oof": cv.f1_out_of_fold}


# -- wdr-pipe rows -----------------------------------------------------------------------------------------------
def cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "wdr_pipe.cli", *args]


def train_help() -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cli("train", "--help"), capture_output=True, text=True, env=env, check=True).stdout


def run_train(store: Path, run: Path, flags: List[str]) -> dict:
    """``wdr-pipe train --store S --out R FLAGS --json`` in a fresh process; its figures and wall time."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = cli("train", "--store", str(store), "--out", str(run), *flags, "--json")
    shown = "wdr-pipe train --store S --out R" + "".join(f" {shlex.quote(f)}" for f in flags)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{shown} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout)
    cfg = json.loads((run / "config.json").read_text())
    d = doc["details"]
    row = {"command": shown, "wall": wall, "settings": cfg["settings"], "size": cfg["data_config"]["size"],
           "reported": {k: d.get(k) for k in ("val_f1_at_0.5", "val_f1_tuned", "val_f1_tuned_out_of_fold")},
           "details": {k: v for k, v in d.items() if not isinstance(v, (list, dict))}}
    row.update(run_figures(store, run))
    if abs(row["f1"] - d["val_f1_at_0.5"]) > 1e-6:
        print(f"  note: {shown}: evaluate gives val F1 {row['f1']:.4f} at 0.5, the run reported "
              f"{d['val_f1_at_0.5']:.4f}", flush=True)
    return row


def run_figures(store: Path, run: Path) -> dict:
    """The three figures of a finished run, from its best checkpoint's validation predictions
    (``wdr-pipe evaluate`` writes them; not timed), computed as for every other row."""
    from wdr_pipe.wdr.runs.evalfiles import read_predictions

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cli("evaluate", "--store", str(store), "--run", str(run), "--split", "validation",
                              "--no-report", "--saliency", "0", "--workers", "0"), capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise SystemExit(f"wdr-pipe evaluate --run {run} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    scored, _ = read_predictions(run / "eval" / "validation" / "predictions.parquet")
    return figures(scored.labels, scored.probs)


def image_epochs(run: dict) -> int:
    """Epochs over the images of a ``run_train`` row, fastai's ``fine_tune(E - 1, freeze_epochs=1)`` at equal
    work: its ``--epochs``; for lp-ft, its fine-tune's planned epochs plus one (the heads phase trains on the
    embeddings, one pass over the images, as fastai's frozen epoch does)."""
    if run["settings"].get("epochs"):
        return int(run["settings"]["epochs"])
    return int(run["details"]["fine-tune_epochs"]) + 1


def single_flags(help_text: str) -> List[str]:
    flags = []
    if "--recipe" in help_text:
        flags += ["--recipe", "single"]
    if "--no-pretrained" in help_text:
        flags += ["--no-pretrained"]
    for k, v in SINGLE.items():
        if v is not None:
            flags += [f"--{k.replace('_', '-')}", str(v)]
    return flags


def same_as_default(default: dict, help_text: str) -> bool:
    """Whether the single row's settings are the default row's (today's code): then it is not trained twice."""
    s = default["settings"]
    if "--recipe" in help_text and s.get("recipe", "single") != "single":
        return False
    if s.get("pretrained"):
        return False
    return all(s.get(k) == v for k, v in SINGLE.items())


# -- the oracle ------------------------------------------------------------------------------------------------
def oracle(store: Path, size: int, wide: bool, c: Optional[float]) -> dict:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    from recipe_lab import load_xy
    from wdr_pipe.cache import load_features

    train, val = load_xy(store, size)
    t0 = time.perf_counter()
    xt, xv = train.x, val.x
    if wide:
        def feats(split, ids):
            fid, hog, hist = load_features(store, split)
            at = {str(i): r for r, i in enumerate(fid)}
            rows = [at[str(i)] for i in ids]
            return np.hstack([hog[rows], hist[rows]]).astype(np.float32)

        wt, wv = feats("train", train.ids), feats("validation", val.ids)
        mu, sd = wt.mean(0), wt.std(0)
        sd[sd == 0] = 1.0
        xt, xv = np.hstack([xt, (wt - mu) / sd]), np.hstack([xv, (wv - mu) / sd])
    p = np.zeros(val.y.shape, np.float32)
    chosen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for j in range(train.y.shape[1]):
            yj = train.y[:, j]
            if yj.min() == yj.max():        # a label the training split never (or always) shows
                p[:, j] = float(yj[0])
                continue
            if c is None and min(int(yj.sum()), int((1 - yj).sum())) >= 3:
                m = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0], cv=3, scoring="neg_log_loss", max_iter=2000)
                m.fit(xt, yj)
                chosen.append(float(m.C_[0]))
            else:
                m = LogisticRegression(C=c or 1.0, max_iter=2000).fit(xt, yj)
            p[:, j] = m.predict_proba(xv)[:, 1]
    wall = time.perf_counter() - t0
    what = "C by 3-fold CV" if c is None else f"C={c:g}"
    if chosen:
        what += f" (chosen: median {np.median(chosen):g})"
    return {"command": f"LogisticRegression one-vs-rest, {what}, embeddings{' + HOG + colour' if wide else ''}",
            "wall": wall, **figures(val.y, p)}


# -- fastai ------------------------------------------------------------------------------------------------------
def store_items(store: Path, split: str):
    import pyarrow.parquet as pq

    from wdr_pipe.cache import load_labels, open_store

    ids, y = load_labels(store, split)
    at = {str(i): r for r, i in enumerate(ids)}
    items = []
    for shard in open_store(store).image_shards(split):
        t = pq.read_table(shard, columns=["image_id", "jpeg"])
        for image_id, jpeg in zip(t.column("image_id").to_pylist(), t.column("jpeg").to_pylist()):
            if image_id in at:
                items.append((jpeg, y[at[image_id]].astype(np.float32)))
    return items


def fastai_row(store: Path, size: int, epochs: int, lrfind: bool, batch: int = 64) -> dict:
    import logging

    import torch
    from fastai.vision.all import (DataBlock, FuncSplitter, ImageBlock, MultiCategoryBlock, PILImage, Resize,
                                   aug_transforms, vision_learner)

    from wdr_pipe.wdr.model.backbone import offline_weights_file

    logging.getLogger("wdr_pipe").setLevel(logging.WARNING)
    train, val = store_items(store, "train"), store_items(store, "validation")
    n_labels = len(train[0][1])
    data = [(x, y, False) for x, y in train] + [(x, y, True) for x, y in val]
    t0 = time.perf_counter()
    block = DataBlock(blocks=(ImageBlock, MultiCategoryBlock(encoded=True, vocab=[str(i) for i in range(n_labels)])),
                      get_x=lambda i: PILImage.create(io.BytesIO(data[i][0])), get_y=lambda i: data[i][1],
                      splitter=FuncSplitter(lambda i: data[i][2]), item_tfms=Resize(size),
                      batch_tfms=aug_transforms())
    dls = block.dataloaders(list(range(len(data))), bs=batch)  # items are row numbers
    learn = vision_learner(dls, "tf_efficientnet_lite0", pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(offline_weights_file())))
    with learn.no_bar(), learn.no_logging():
        lr = 2e-3
        if lrfind:
            lr = float(learn.lr_find(show_plot=False).valley)
        learn.fine_tune(max(1, epochs - 1), base_lr=lr, freeze_epochs=1)
        probs, targs = learn.get_preds(dl=dls.valid)
    wall = time.perf_counter() - t0
    what = f"lr_find valley {lr:.1e}" if lrfind else "base_lr 2e-3 (default)"
    return {"command": f"fastai vision_learner + fine_tune({max(1, epochs - 1)}, freeze_epochs=1), {what}, "
                       f"{size} px", "wall": wall,
            **figures(targs.numpy().astype(np.uint8), probs.numpy().astype(np.float32))}


# -- the table ------------------------------------------------------------------------------------------------------
def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(name: str, info: str, rows: List[Tuple[str, dict]]) -> str:
    lines = [f"\n**{name}** ({info})\n", "| row | what ran | val F1 at 0.5 | tuned (in sample) | tuned, out of fold "
             "| wall |", "|---|---|---:|---:|---:|---:|"]
    for label, r in rows:
        wall = "" if r.get("wall") is None else f"{r['wall']:.0f} s"
        lines.append(f"| {label} | {r['command']} | {fmt(r.get('f1'))} | {fmt(r.get('tuned'))} | {fmt(r.get('oof'))} "
                     f"| {wall} |")
    return "\n".join(lines)


def main() -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "wdr-recipe")
    ap.add_argument("--sets", default="demo,photos", help="comma-separated: demo, photos, demo10")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--demo", default="480,120", help="TRAIN,VAL images of the demo set")
    ap.add_argument("--photos", default="224,48", help="TRAIN,VAL crops of the photo set")
    ap.add_argument("--demo10", default="4800,1200", help="TRAIN,VAL images of the ten-times set")
    ap.add_argument("--train-flags", default="", help="extra flags for the wdr-pipe rows (smoke runs only: the "
                                                     "default row is then no longer the default)")
    ap.add_argument("--fastai-epochs", type=int, default=None, help="[the default row's epochs]")
    ap.add_argument("--fastai-batch", type=int, default=64, help="fastai's batch size (its default: 64)")
    ap.add_argument("--oracle-c", type=float, default=None, help="fix C [by 3-fold CV among 0.1, 1, 10]")
    args = ap.parse_args()
    logging.getLogger("wdr_pipe").setLevel(logging.WARNING)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = sorted(set(sets) - {"demo", "photos", "demo10"}) + sorted(set(rows) - set(ROWS))
    if bad:
        ap.error(f"unknown set or row: {', '.join(bad)}")
    sizes = {k: tuple(int(v) for v in getattr(args, k).split(",")) for k in ("demo", "photos", "demo10")}
    extra = shlex.split(args.train_flags)
    help_text = train_help()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"bench_recipe on commit {commit}: {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    out_tables = []
    for name in sets:
        store = build_set(name, args.out, sizes[name])
        done: List[Tuple[str, dict]] = []
        default = None
        size = None
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            tmp = Path(tmp)
            if "default" in rows or "single" in rows or "fastai" in rows or "fastai-lrfind" in rows:
                fresh = store_without_embeddings(store, tmp)
                default = run_train(fresh, tmp / "default", extra)
                size = default["size"]
                print(f"{name} default: {default['f1']:.3f} / {default['tuned']:.3f} tuned, {default['wall']:.0f} s",
                      flush=True)
                if "default" in rows:
                    done.append(("default", default))
            if "single" in rows:
                if not extra and same_as_default(default, help_text):
                    done.append(("single phase (today's defaults, explicit)",
                                 {**default, "command": "the same settings as the default row on this checkout "
                                                        "(not trained twice)", "wall": None}))
                else:
                    r = run_train(store, tmp / "single", single_flags(help_text) + extra)
                    done.append(("single phase (today's defaults, explicit)", r))
                    print(f"{name} single: {r['f1']:.3f} / {r['tuned']:.3f} tuned, {r['wall']:.0f} s", flush=True)
        if size is None:
            from wdr_pipe.wdr.embed.stage import backbone_data_config
            size = backbone_data_config("tf_efficientnet_lite0", None).size
        if "oracle" in rows or "oracle-wide" in rows:
            from recipe_lab import embedding_key

            t0 = time.perf_counter()
            embedding_key(store, size)
            print(f"{name}: the store's embeddings at {size} px ready in {time.perf_counter() - t0:.0f} s "
                  "(computed once per store, or found)", flush=True)
            for wide in (False, True):
                if ("oracle-wide" if wide else "oracle") in rows:
                    r = oracle(store, size, wide, args.oracle_c)
                    done.append(("linear-probe oracle" + (" + HOG + colour" if wide else ""), r))
                    print(f"{name} {r['command']}: {r['f1']:.3f} / {r['tuned']:.3f} tuned, {r['wall']:.0f} s",
                          flush=True)
        epochs = args.fastai_epochs or (image_epochs(default) if default else SINGLE["epochs"])
        for key in ("fastai", "fastai-lrfind"):
            if key in rows:
                r = fastai_row(store, size, epochs, lrfind=key == "fastai-lrfind", batch=args.fastai_batch)
                done.append((key, r))
                print(f"{name} {r['command']}: {r['f1']:.3f} / {r['tuned']:.3f} tuned, {r['wall']:.0f} s", flush=True)
        from wdr_pipe.cache import load_labels
        n_t, n_v = len(load_labels(store, "train")[0]), len(load_labels(store, "validation")[0])
        info = (f"{n_t} train / {n_v} validation images, {load_labels(store, 'train')[1].shape[1]} labels; "
                f"load average at the end {os.getloadavg()[0]:.1f}")
        out_tables.append(table(name, info, done))
        print(out_tables[-1], flush=True)
    print("\n".join(out_tables))


if __name__ == "__main__":
    main()
