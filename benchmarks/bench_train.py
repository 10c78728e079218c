"""Training benchmark: images/s of the trainer fed by our loader against the same model fed one fixed batch.

A store is written by the real stages (fetch over file:// URLs, shorter side
320 px as ``wdr-pipe fetch`` stores them) from generated garment photos, under
--out (kept between runs). For ``--deep tune`` and ``--deep fixed``:

- trainer: ``wdr_pipe.wdr.train.loop.train`` itself, ``tf_efficientnet_lite0`` at
  --size px, batches of --batch from --workers loader workers; images/s over
  the second epoch's steps (from the progress hook's timestamps, so the
  loader's start, validation and checkpoints are left out);
- ceiling: the same model, optimizer, loss and schedule, built with the same
  pieces (``trainsetup``), stepping on one batch kept in memory: what the
  trainer would do if loading were free.

Each runs --rounds times, interleaved; the best round is kept. A Markdown table
with the ratio is printed at the end.

    python benchmarks/bench_train.py                      # CPU: 2 cores here
    python benchmarks/bench_train.py --workers 8 --batch 64 --size 224   # a GPU machine
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(out: Path, n_train: int) -> Path:
    from stores import generated_store

    print(f"the store of {n_train} + 32 drawn images under {out} (what is committed is reused) ...", flush=True)
    return generated_store(out / "store", out / "data", {"train": n_train, "validation": 32}, seed=3,
                           size_range=(400, 600), size=320, shard_size=256, features=False, stats=False)


def config(store: Path, out: Path, deep: str, args):
    from wdr_pipe.wdr.train.config import TrainConfig

    return TrainConfig(store=str(store), out=str(out), deep=deep, image_size=args.size, batch_size=args.batch,
                       loader_workers=args.workers, epochs=2, checkpoint_every=0, thresholds="none", device=args.device)


def trainer(store: Path, deep: str, args) -> float:
    """Images/s of ``train()`` over its second epoch."""
    from wdr_pipe.wdr.train.loop import train

    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        train(config(store, Path(tmp) / "run", deep, args),
              progress=lambda p: marks.append((time.perf_counter(), p.done)))
    per_epoch = marks[-1][1] // 2
    (t0, s0), (t1, s1) = marks[per_epoch], marks[-1]  # after the first step of epoch 2 .. the last step
    return (s1 - s0) * args.batch / (t1 - t0)


def ceiling(store: Path, deep: str, args) -> float:
    """Images/s of the same training step on one batch kept in memory (on the device)."""
    import torch

    from wdr_pipe.cache import open_store
    from wdr_pipe.wdr.data.loader import make_loader
    from wdr_pipe.wdr.data.transforms import data_config
    from wdr_pipe.wdr.dist import pick_device
    from wdr_pipe.wdr.model.network import build_model
    from wdr_pipe.wdr.train.inputs import prepare_inputs
    from wdr_pipe.wdr.train.loss import Criterion
    from wdr_pipe.wdr.train.optim import make_optimizer

    cfg = config(store, Path("unused"), deep, args)
    device = pick_device(cfg.device)
    amp = device.type == "cuda"
    inputs = prepare_inputs(open_store(store), cfg)
    model = build_model(cfg.model_config(), len(inputs.label_ids)).to(device, memory_format=torch.channels_last)
    loader = make_loader(store, "train", cfg.batch_size, num_workers=0,
                         config=data_config(model.backbone, size=args.size), device=device, drop_last=True)
    batch = next(iter(loader))
    opt, sched = make_optimizer(cfg, model, len(loader))
    crit = Criterion(cfg.loss, None).to(device)
    model.train()

    def step(i):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = crit(model(batch["image"]), batch["labels"])
            loss.backward()
        loss.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step_update(num_updates=i)

    for i in range(3):
        step(i)
    n = max(5, len(loader) - 1)
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
    return n * cfg.batch_size / (time.perf_counter() - t0)


def main() -> None:
    import logging

    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "wdr-bench-train")
    ap.add_argument("--train", type=int, default=384, help="training images in the generated store")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.getLogger("wdr_pipe").setLevel(logging.ERROR)
    store = build(args.out, args.train)
    print(f"{args.train} training images, lite0 at {args.size} px, batch {args.batch}, {args.workers} loader "
          f"worker(s), {os.cpu_count()} cores, torch threads {torch.get_num_threads()}", flush=True)
    best = {}
    for r in range(args.rounds):
        for deep in ("tune", "fixed"):
            for name, fn in (("trainer", trainer), ("ceiling", ceiling)):
                rate = fn(store, deep, args)
                best[deep, name] = max(best.get((deep, name), 0.0), rate)
                print(f"round {r + 1}: --deep {deep}, {name}: {rate:.1f} images/s", flush=True)
    print(f"\n| tf_efficientnet_lite0, {args.size} px, batch {args.batch} | fed by our loader ({args.workers} "
          f"worker{'s' if args.workers != 1 else ''}) | one batch in memory (ceiling) | ratio |\n|---|---:|---:|---:|")
    for deep in ("tune", "fixed"):
        a, b = best[deep, "trainer"], best[deep, "ceiling"]
        print(f"| --deep {deep} | {a:.1f} img/s | {b:.1f} img/s | {a / b:.2f} |")


if __name__ == "__main__":
    main()
