"""Phase 2 of LP-FT, what today's flags can't do: layer-wise rate decay and frozen BatchNorm, side by side.

The model is ``tf_efficientnet_lite0`` with its ImageNet weights (``wdr_pipe.wdr.model.backbone.create_backbone``,
offline) and timm's own classifier as the head (``num_classes`` = the store's labels), so that timm's
``param_groups_layer_decay`` (through ``create_optimizer_v2(layer_decay=...)``) puts the head in the last,
undecayed group. The head starts from phase 1: a linear probe trained on the store's cached embeddings
at the same image size (``recipe_lab.probe``, AdamW, lr 3e-2, batch 32, equal batches, the step budget
``max(300, 5 epochs)``). The images come from wdr-pipe's own loader (``make_loader``: the trainer's
augmentation, random resized crop of 25-100 % of the area and a flip; the embeddings' centre crop for
validation), so only the optimisation differs from ``wdr-pipe train --init PHASE1 --deep tune``.

Each variant (``--variants``, comma-separated ``name:key=value;key=value``) sets:

- ``lr``: the peak rate (the head's, with layer decay), AdamW, weight decay ``--wd``;
- ``warmup``: warm-up epochs (linear from lr / 100), then cosine to 0 over ``epochs``, per update (timm);
- ``ld``: layer decay (0 = one rate for every parameter), e.g. 0.75: each of the backbone's groups
  below the head trains at 0.75 times the rate of the group above;
- ``bn``: ``train`` (batch statistics, running stats updated: today's trainer) or ``frozen`` (every
  BatchNorm in eval mode: running statistics used and never updated; its scale and shift still train);
- ``epochs``.

Validation micro-F1 at 0.5 after every epoch (the phase-1 head's own figure is epoch 0); the best epoch's
predictions give the tuned (in sample) and out-of-fold figures. Runs interleave the variants seed by seed.

    python benchmarks/finetune_lab.py --store /tmp/photos/store --size 128 \\
        --variants "plain:lr=3e-4;warmup=1;ld=0;bn=train,llrd:lr=1e-3;warmup=1;ld=0.75;bn=frozen"
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULTS = dict(lr=3e-4, warmup=1.0, ld=0.0, bn="train", epochs=5)


def parse_variants(text: str) -> Dict[str, dict]:
    out = {}
    for item in text.split(","):
        name, _, body = item.strip().partition(":")
        v = dict(DEFAULTS)
        for kv in filter(None, body.split(";")):
            k, _, val = kv.partition("=")
            if k not in DEFAULTS:
                raise SystemExit(f"--variants: unknown key {k!r} in {item!r}; use {', '.join(DEFAULTS)}")
            v[k] = val if k == "bn" else (int(val) if k == "epochs" else float(val))
        if v["bn"] not in ("train", "frozen"):
            raise SystemExit(f"--variants {item!r}: bn is train or frozen")
        out[name] = v
    return out


def phase1_head(train, val, seed: int, batch: int = 32):
    """The linear probe on the stored vectors: recipe_lab's phase 1 at the recommended settings."""
    from recipe_lab import Probe, batches_of, probe

    per_epoch = len(batches_of(len(train.ids), batch, "fit"))
    steps = max(300, 5 * per_epoch)
    r = probe(train, val, Probe(lr=3e-2, batch=batch, opt="adamw", last="fit", steps=steps, seed=seed))
    return r["head"], r["last_f1"], r["last_probs"]


def bn_eval(model) -> None:
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def predict(model, loader):
    import torch

    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for batch in loader:
            probs.append(torch.sigmoid(model(batch["image"])).numpy())
            labels.append(batch["labels"].numpy().astype(np.uint8))
    return np.concatenate(labels), np.concatenate(probs)


def finetune(store: Path, size: int, head, v: dict, seed: int, batch: int, workers: int, wd: float,
             log=print) -> dict:
    import timm.optim
    import timm.scheduler
    import torch

    from recipe_lab import micro_f1
    from wdr_pipe.wdr.model.backbone import create_backbone
    from wdr_pipe.wdr.data.loader import make_loader
    from wdr_pipe.wdr.embed.stage import backbone_data_config

    torch.manual_seed(seed)
    n_labels = head.out_features
    model = create_backbone("tf_efficientnet_lite0", pretrained=True)  # the weights hold no classifier:
    model.reset_classifier(n_labels)                                    # timm's own, for the layer groups
    with torch.no_grad():
        model.classifier.weight.copy_(head.weight)
        model.classifier.bias.copy_(head.bias)
    dcfg = backbone_data_config("tf_efficientnet_lite0", size)
    model.to(memory_format=torch.channels_last)
    train_loader = make_loader(store, "train", batch, workers, config=dcfg, train=True, drop_last=True, seed=seed,
                               device="cpu")
    val_loader = make_loader(store, "validation", 64, workers, config=dcfg, train=False, device="cpu")
    per_epoch = len(train_loader)
    opt = timm.optim.create_optimizer_v2(model, opt="adamw", lr=v["lr"], weight_decay=wd,
                                         layer_decay=v["ld"] or None)
    sched, _ = timm.scheduler.create_scheduler_v2(opt, sched="cosine", num_epochs=v["epochs"],
                                                  warmup_epochs=v["warmup"], warmup_lr=v["lr"] / 100,
                                                  step_on_epochs=False, updates_per_epoch=per_epoch)
    sched.step_update(num_updates=0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    y0, p0 = predict(model, val_loader)
    curve = [(0, micro_f1(y0, p0))]
    best = (curve[0][1], 0, p0)
    t0, step = time.perf_counter(), 0
    for epoch in range(1, v["epochs"] + 1):
        model.train()
        if v["bn"] == "frozen":
            bn_eval(model)
        for b in train_loader:
            loss = loss_fn(model(b["image"]), b["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(num_updates=step)
        y, p = predict(model, val_loader)
        f = micro_f1(y, p)
        curve.append((epoch, f))
        if f > best[0]:
            best = (f, epoch, p)
        log(f"    epoch {epoch}: val F1 {f:.3f} ({time.perf_counter() - t0:.0f} s)")
    return {"curve": curve, "best_f1": best[0], "best_epoch": best[1], "best_probs": best[2], "y": y0,
            "seconds": time.perf_counter() - t0, "steps": step, "per_epoch": per_epoch}


def tuned(y, p) -> Dict[str, float]:
    from wdr_pipe.wdr.metrics.thresholds import cross_validated_gain

    cv = cross_validated_gain(y, p, folds=5, seed=0)
    return {"tuned": cv.f1_in_sample, "oof": cv.f1_out_of_fold}


def main() -> None:
    import logging

    import torch

    from recipe_lab import load_xy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--variants", required=True)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", type=Path, default=None)
    args = ap.parse_args()
    name = args.name or args.store.parent.name
    torch.set_num_threads(args.threads)
    logging.getLogger("wdr_pipe").setLevel(logging.WARNING)
    variants = parse_variants(args.variants)
    train, val = load_xy(args.store, args.size)
    print(f"{name}: {len(train.ids)} train / {len(val.ids)} validation images at {args.size} px, batch {args.batch}, "
          f"{args.workers} loader worker(s), torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rows: Dict[str, List[dict]] = {k: [] for k in variants}
    p1: List[dict] = []
    for seed in range(args.seeds):
        head, f1_probe, probs = phase1_head(train, val, seed, args.batch)
        p1.append({"f1": f1_probe, **tuned(val.y, probs)})
        print(f"seed {seed}: phase 1 (probe on the embeddings) val F1 {f1_probe:.3f}", flush=True)
        for vname, v in variants.items():
            print(f"  {vname} {v}", flush=True)
            r = finetune(args.store, args.size, head, v, seed, args.batch, args.workers, args.wd)
            r.update(tuned(r["y"], r["best_probs"]))
            rows[vname].append(r)
            doc = {"exp": "finetune", "data": name, "size": args.size, "variant": vname, **v, "seed": seed,
                   "phase1": f1_probe, "curve": r["curve"], "best_f1": r["best_f1"], "best_epoch": r["best_epoch"],
                   "tuned": r["tuned"], "oof": r["oof"], "seconds": r["seconds"], "batch": args.batch}
            if args.log:
                with open(args.log, "a") as f:
                    f.write(json.dumps(doc) + "\n")
            print(f"  -> best val F1 {r['best_f1']:.3f} at epoch {r['best_epoch']} (epoch 0 = phase 1's head: "
                  f"{r['curve'][0][1]:.3f}), tuned {r['tuned']:.3f}, out of fold {r['oof']:.3f}; "
                  f"{r['seconds']:.0f} s", flush=True)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"\n| {name}, {args.size} px, batch {args.batch}, {args.seeds} seed(s) | val F1 by epoch (0 = phase 1) | best | "
          "tuned (in sample) | out of fold | seconds |\n|---|---|---:|---:|---:|---:|")
    print(f"| phase 1 alone (probe on the embeddings) | | {mean([r['f1'] for r in p1]):.3f} | "
          f"{mean([r['tuned'] for r in p1]):.3f} | {mean([r['oof'] for r in p1]):.3f} | |")
    for vname, rs in rows.items():
        v = variants[vname]
        curve = " ".join(f"{mean([r['curve'][e][1] for r in rs]):.3f}" for e in range(len(rs[0]["curve"])))
        label = (f"{vname}: lr {v['lr']:g}, warm-up {v['warmup']:g}, " +
                 (f"layer decay {v['ld']:g}" if v["ld"] else "one rate") + f", BN {v['bn']}, {v['epochs']} epochs")
        print(f"| {label} | {curve} | {mean([r['best_f1'] for r in rs]):.3f} | {mean([r['tuned'] for r in rs]):.3f} | "
              f"{mean([r['oof'] for r in rs]):.3f} | {mean([r['seconds'] for r in rs]):.0f} |")


if __name__ == "__main__":
    main()
