"""The WDR ablation table on generated data: which parts of Wide, Deep and Recurrent earn their place.

A store is written by the real stages (``benchmarks/stores.py``'s ``build_store``:
fetch over file:// URLs at a --stored px shorter side, HOG + colour features
at 64 px, label statistics) from generated garment photos (``wdr_pipe.demo.synth``,
24 labels in 6 groups), under --out and kept between runs. Every row is one
run of the real ``wdr_pipe.wdr.train.loop.train`` with ``tf_efficientnet_lite0
--pretrained`` at --size px, the same epochs, learning rate, batch and seed;
only the flags of the row differ:

    Deep (fixed all)                  --deep fixed --stream-images (images decoded and augmented every batch)
    ... from cached embeddings        --deep fixed (the store's cached embeddings: no image decoded)
    Deep (fixed half)                 --deep half
    Deep (tune)                       --deep tune
    Deep (tune), seed 1               --seed 1: the seed-to-seed noise of one row
    Deep (tune), ASL                  --loss asl (against the BCE of Deep (tune))
    Deep (tune) + Wide                --parts deep,wide
    Deep (tune) + Recurrent           --parts deep,recurrent (pre-trained label embeddings, frozen)
    Deep (tune) + Wide + Recurrent    --parts deep,wide,recurrent
    ... + weighting (loss)            the same with --weighting loss (the poster's alpha weighting)

Each row reports validation micro-F1 at 0.5 and with per-class thresholds
tuned on the validation split (in sample, as the paper's starred rows), plus
the out-of-fold figure of those thresholds (``--thresholds cv``, 5 folds): all
three from the run's ``result.json``. Runs live in ``--out/runs/<row>-<hash of
this script's settings>``: a rerun reuses every finished run (train() does)
and continues an unfinished one. The table is printed in Markdown at the end.

Torch runs one intra-op thread (``--threads``): with the machine's 2 cores
shared by other jobs, a training step of 2 threads took 2.5-6.6 s against
0.6-1.1 s with one (the threads wait for each other at every parallel region).

    python benchmarks/ablation.py                      # the table in docs/benchmarks.md
    python benchmarks/ablation.py --rows tune --epochs 1 --out /tmp/probe   # time one row
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TUNE_WR = dict(parts="deep,wide,recurrent")
# (short name, the paper-style row name, the row's flags)
ROWS = [
    ("fixed", "Deep (fixed all), images streamed", dict(deep="fixed", stream_images=True)),
    ("fixed-cached", "Deep (fixed all), from cached embeddings", dict(deep="fixed")),
    ("half", "Deep (fixed half)", dict(deep="half")),
    ("tune", "Deep (tune)", dict()),
    ("tune-seed1", "Deep (tune), seed 1", dict(seed=1)),
    ("tune-asl", "Deep (tune), ASL instead of BCE", dict(loss="asl")),
    ("wide", "Deep (tune) + Wide", dict(parts="deep,wide")),
    ("recurrent", "Deep (tune) + Recurrent", dict(parts="deep,recurrent")),
    ("wdr", "Deep (tune) + Wide + Recurrent", TUNE_WR),
    ("wdr-weighted", "Deep (tune) + Wide + Recurrent, weighting (loss)", dict(TUNE_WR, weighting="loss")),
]


def build(out: Path, n_train: int, n_val: int, stored: int, seed: int) -> Path:
    from stores import generated_store

    t = time.perf_counter()
    print(f"the store of {n_train} + {n_val} drawn images under {out} (what is committed is reused) ...", flush=True)
    store = generated_store(out / "store", out / "data", {"train": n_train, "validation": n_val}, seed=seed,
                            size_range=(320, 480), size=stored, shard_size=500)
    print(f"store ready in {time.perf_counter() - t:.0f} s", flush=True)
    return store


def oracle(store: Path, seed: int) -> dict:
    """Validation micro-F1 of a model that gets every label the image shows right, and gender (which
    no image shows: it is drawn given the category) from its posterior P(female | category, colour),
    estimated from 200,000 fresh draws; one threshold on that posterior, the best on validation."""
    from collections import Counter

    import numpy as np

    from wdr_pipe.cache import label_space, load_labels
    from wdr_pipe.demo import synth

    ids, y = load_labels(store, "validation")
    space = label_space(store).tolist()
    # the garments behind the validation images: drawn as synth._draw_one draws them (split 1 = validation)
    garments = {str(i): synth.sample_garment(np.random.default_rng([seed, 1, int(i)])) for i in ids}
    for i, row in zip(ids, y):
        if sorted(garments[str(i)].labels()) != [space[j] for j in np.flatnonzero(row)]:
            raise SystemExit(f"oracle: image {i}'s labels are not the drawn garment's; synth changed its draw")
    rng, seen = np.random.default_rng(12345), Counter()
    for _ in range(200_000):
        g = synth.sample_garment(rng)
        seen[g.category, g.colour, g.gender] += 1
    female, male = synth.lid("gender", "Female"), synth.lid("gender", "Male")
    best = (0.0, 0.5)
    for t in np.linspace(0.05, 0.95, 91):
        tp = fp = fn = 0
        for g in garments.values():
            truth = set(g.labels())
            f, m = seen[g.category, g.colour, "Female"], seen[g.category, g.colour, "Male"]
            p = f / max(1, f + m)
            pred = (truth - {female, male}) | ({female} if p >= t else set()) | ({male} if 1 - p >= t else set())
            tp, fp, fn = tp + len(pred & truth), fp + len(pred - truth), fn + len(truth - pred)
        best = max(best, (2 * tp / (2 * tp + fp + fn), float(t)))
    return {"f1": best[0], "threshold": best[1]}


def config(store: Path, runs: Path, name: str, flags: dict, args):
    from wdr_pipe.wdr.train.config import TrainConfig

    base = dict(store=str(store), out="unset", backbone="tf_efficientnet_lite0", pretrained=True,
                image_size=args.size, epochs=args.epochs, lr=args.lr, batch_size=args.batch, loader_workers=args.workers,
                warmup_epochs=args.warmup, checkpoint_every=0, thresholds="cv", device=args.device, seed=args.seed)
    # the folder is named by what this script sets, not by TrainConfig.key(): a setting added to wdr-pipe
    # later (at its default) changes that key, and a rerun should still find its runs
    mine = {k: v for k, v in {**base, **flags}.items() if k not in ("store", "out")}
    key = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:10]
    return TrainConfig(**{**base, **flags, "out": str(runs / f"{name}-{key}")})


def run_row(cfg, label: str) -> dict:
    """Train (or reuse) one row's run; its figures from ``RUN/result.json``."""
    from wdr_pipe.wdr.runs.folder import RunFolder
    from wdr_pipe.wdr.train.loop import train

    t = time.perf_counter()

    def hook(p):
        if p.done % 50 == 0 or p.done == p.total:
            print(f"  {label}: step {p.done}/{p.total} ({p.message}), {time.perf_counter() - t:.0f} s", flush=True)

    result = train(cfg, progress=hook)
    doc = json.loads(RunFolder(cfg.out).result.read_text())  # a reused run's own time, not 0
    d = doc["details"]
    return {"f1": d["val_f1_at_0.5"], "tuned": d["val_f1_tuned"], "oof": d.get("val_f1_tuned_out_of_fold"),
            "global": d["val_f1_global"], "best_step": d["best_step"], "steps": doc["counts"]["steps"],
            "seconds": doc["seconds"], "reused": result.ran == 0, "run": cfg.out}


def table(rows, args) -> str:
    head = (f"| Model (lite0 {args.size} px, {args.epochs} epochs) | Val F1 | Val F1* (tuned, in sample) "
            "| Val F1* out of fold | seconds |\n|---|---:|---:|---:|---:|")
    lines = [head]
    for label, r in rows:
        oof = f"{r['oof']:.3f}" if r["oof"] is not None else "-"
        lines.append(f"| {label} | {r['f1']:.3f} | {r['tuned']:.3f} | {oof} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    import logging

    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "wdr-ablation")
    ap.add_argument("--train", type=int, default=2000, help="training images in the generated store")
    ap.add_argument("--val", type=int, default=500, help="validation images")
    ap.add_argument("--stored", type=int, default=160, help="shorter side of the stored images (px)")
    ap.add_argument("--size", type=int, default=128, help="training image size (px)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.0, help="warm-up epochs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on a shared 2-core machine 2 threads ran a step 6x slower)")
    ap.add_argument("--rows", default=",".join(name for name, _, _ in ROWS),
                    help=f"comma-separated subset of {', '.join(name for name, _, _ in ROWS)}")
    args = ap.parse_args()
    logging.getLogger("wdr_pipe").setLevel(logging.ERROR)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(wanted) - {name for name, _, _ in ROWS})
    if unknown:
        ap.error(f"--rows: unknown {', '.join(unknown)}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    store = build(args.out, args.train, args.val, args.stored, args.seed)
    print(f"{args.train} train / {args.val} validation images stored at {args.stored} px; lite0 at {args.size} px, "
          f"{args.epochs} epochs, lr {args.lr:g}, batch {args.batch}, {args.workers} loader worker(s), "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}", flush=True)
    done = []
    for name, label, flags in ROWS:
        if name not in wanted:
            continue
        cfg = config(store, args.out / "runs", name, flags, args)
        r = run_row(cfg, label)
        done.append((label, r))
        print(f"{label}: val F1 {r['f1']:.4f} at 0.5, {r['tuned']:.4f} tuned ({r['oof']:.4f} out of fold); "
              f"best at step {r['best_step']} of {r['steps']}; {r['seconds']:.0f} s"
              f"{' (reused)' if r['reused'] else ''}", flush=True)
    ceiling = oracle(store, args.seed)
    print(f"ceiling: val F1 {ceiling['f1']:.4f} for every visible label right, gender from its posterior "
          f"(threshold {ceiling['threshold']:.2f})", flush=True)
    print(f"\nwall time of this invocation: {time.perf_counter() - t0:.0f} s; of the runs themselves: "
          f"{sum(r['seconds'] for _, r in done):.0f} s\n")
    print(table(done, args))
    print(f"| Ceiling: every visible label right, gender from P(gender given category, colour) "
          f"| {ceiling['f1']:.3f} | | | |")


if __name__ == "__main__":
    main()
