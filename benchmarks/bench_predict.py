"""Prediction benchmark: images/s of ``wdr-pipe predict`` on a test split, against the model alone.

A store is written by the real stages (fetch over file:// URLs, shorter side
320 px as ``wdr-pipe fetch`` stores them) from generated garment photos, and
a run is trained on it (``tf_efficientnet_lite0``, ImageNet weights, at its
own 224 px, one short epoch: the speed of prediction does not depend on how
well the model learned), both under --out and kept between runs. Then, --rounds
times, interleaved, best kept:

- predict: ``predict_split`` (what ``wdr-pipe predict --split test --out
  sub.csv`` runs): every test image streamed through the loader (--workers),
  scored, thresholded, the submission written; images/s of the scoring loop and
  of the whole call (model loading and the CSV included);
- with ``--tta flip`` (two forward passes per image);
- ceiling: the same model on one batch of --batch images kept in memory: what
  prediction would do if loading and decoding were free.

    python benchmarks/bench_predict.py                    # CPU: 2 cores here
    python benchmarks/bench_predict.py --test 4000 --workers 8 --batch 128   # a GPU machine
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(out: Path, n_test: int) -> Path:
    from stores import generated_store

    print(f"the store of 96 + 32 + {n_test} drawn images under {out} (what is committed is reused) ...", flush=True)
    return generated_store(out / f"store-{n_test}", out / f"data-{n_test}",
                           {"train": 96, "validation": 32, "test": n_test}, seed=5, size_range=(400, 600), size=320,
                           shard_size=500, features=False, stats=False)


def run_folder(store: Path, out: Path, args) -> Path:
    from wdr_pipe.wdr.train.loop import train
    from wdr_pipe.wdr.train.config import TrainConfig

    run = out / f"run-{store.name}"
    train(TrainConfig(store=str(store), out=str(run), pretrained=True, epochs=1, batch_size=32, loader_workers=args.workers,
                      checkpoint_every=0, device=args.device))
    return run


def predict(store: Path, run: Path, args, tta: str) -> tuple:
    from wdr_pipe.wdr.score.predict import PredictConfig, predict_split

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = predict_split(PredictConfig(store=str(store), run=str(run), out=str(Path(tmp) / "sub.csv"), tta=tta,
                                        batch_size=args.batch, loader_workers=args.workers, device=args.device))
        wall = time.perf_counter() - t
    return r.details["images_per_s"], r.counts["rows"] / wall


def ceiling(store: Path, run: Path, args) -> float:
    import torch

    from wdr_pipe.wdr.data.loader import make_loader
    from wdr_pipe.wdr.runs.folder import open_run
    from wdr_pipe.wdr.score.scorer import ModelScorer

    scorer = ModelScorer(open_run(run), device=args.device, batch_size=args.batch, loader_workers=0)
    batch = next(iter(make_loader(store, "test", args.batch, num_workers=0, train=False, config=scorer.data_config)))
    x = scorer.normalize(batch["image"].to(scorer.device)).contiguous(memory_format=torch.channels_last)
    scorer.probs(x)  # warm-up
    reps, t = 5, time.perf_counter()
    for _ in range(reps):
        scorer.probs(x)
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()
    return reps * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "predict")
    ap.add_argument("--test", type=int, default=1000, help="test images")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    store = build(args.out, args.test)
    run = run_folder(store, args.out, args)
    rows = {"predict": [], "predict --tta flip": [], "ceiling: model on one in-memory batch": []}
    for _ in range(args.rounds):
        rows["predict"].append(predict(store, run, args, "none"))
        rows["predict --tta flip"].append(predict(store, run, args, "flip"))
        rows["ceiling: model on one in-memory batch"].append((ceiling(store, run, args), None))
    best = {k: max(v, key=lambda x: x[0]) for k, v in rows.items()}
    top = best["ceiling: model on one in-memory batch"][0]
    print(f"\n{args.test} test images at 224 px, tf_efficientnet_lite0, batch {args.batch}, {args.workers} workers, "
          f"best of {args.rounds}\n")
    print("| run | scoring images/s | whole call images/s | of the ceiling |\n|---|---:|---:|---:|")
    for k, (score, whole) in best.items():
        print(f"| {k} | {score:,.0f} | {'' if whole is None else f'{whole:,.0f}'} | {score / top:.0%} |")


if __name__ == "__main__":
    main()
