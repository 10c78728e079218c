"""Features benchmark: ``compute_features`` against a plain skimage + numpy loop, side by side.

Both read the same image shards (N generated garment photos, drawn at
320-480 px a side and stored by the real ``wdr-pipe fetch`` over ``file://``
URLs at a 299 px shorter side, quality 95), decode and resize them the same
way (``features.decode_resize``), and write the same feature Parquet shards;
they differ only in the feature maths:

- ours: ``hog_batch`` and ``color_hist_batch`` over batches of 64 images;
- plain: ``skimage.feature.hog`` per image and ``np.histogramdd`` per image
  over its non-background 8-bit HSV pixels;
- plain with Pillow decode: the same loop decoding as a plain script does
  (Pillow at full size, then ``resize``), i.e. what a user would write.

Both run one task per shard through ``runner.run_tasks``: in this process
(1 process each), then on the same warm LocalCluster of --workers processes
(start-up not counted), alternately --repeats times; reported: best wall
clock, and the workers' CPU seconds per image (steadier on a shared
machine). The outputs are checked equal (1e-4). Then, as a user runs it:
``compute_features`` with its own fresh LocalCluster, first run on an empty
feature folder, then a second run (nothing to do). Also: milliseconds per
image of each step in one process. Results go to --out/results.json.

Run (the store is drawn and fetched once, and cached under --out)::

    python benchmarks/bench_features.py --n 2400
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stores import generated_store
from wdr_pipe.cache import Store
from wdr_pipe.pipeline.features import stage as F
from wdr_pipe.pipeline.configs import FeatureConfig
from wdr_pipe.pipeline.features.color import color_hist_batch
from wdr_pipe.pipeline.features.hog import hog_batch
from wdr_pipe.pipeline.runner import run_tasks

REPO = Path(__file__).resolve().parents[1]
SPLIT = "bench"


# -- the store -------------------------------------------------------------------

DRAWN = (320, 480)  # px, each side of a drawn photo; fetch stores them at a 299 px shorter side


def make_store(root: Path, n: int, shard_size: int) -> Store:
    """A store with n images in shards of shard_size under images/bench/, written by the real fetch
    from photos drawn under root's parent (both kept between runs: a rerun reuses them)."""
    if not Store(root, create=True).image_shards(SPLIT):
        print(f"drawing {n} images and fetching them into {root} ...", flush=True)
    generated_store(root, root.parent / "data", {SPLIT: n}, seed=11, size_range=DRAWN, size=299, quality=95,
                    shard_size=shard_size, features=False, stats=False)
    return Store(root)


# -- the plain competitor ----------------------------------------------------------


def background_mask(hsv: np.ndarray, max_s: float, min_v: float) -> np.ndarray:
    """True where an 8-bit HSV pixel is near-white background (S/255 < max_s and V/255 > min_v)."""
    v = np.arange(256) / 255.0
    return (v < max_s)[hsv[..., 1]] & (v > min_v)[hsv[..., 2]]


def plain_features(rgb: np.ndarray, cfg: FeatureConfig):
    """skimage.feature.hog and np.histogramdd, one image at a time."""
    from skimage.feature import hog

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h = hog(gray, cfg.orientations, (cfg.cell, cfg.cell), (cfg.block, cfg.block), cfg.block_norm)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    vals = hsv[~background_mask(hsv, cfg.background_max_s, cfg.background_min_v)]
    edges = [np.linspace(0, 180, cfg.bins + 1), np.linspace(0, 256, cfg.bins + 1), np.linspace(0, 256, cfg.bins + 1)]
    hist, _ = np.histogramdd(vals.astype(np.float64), bins=edges)
    return h, hist.ravel() / max(len(vals), 1)


def pil_decode_resize(data: bytes, size: int) -> np.ndarray:
    """How a plain script decodes: Pillow, full size, then resize (Pillow's default filter)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)))


def plain_task(task: F.FeatureShard, on_progress, decode=F.decode_resize) -> dict:
    """The same shard in, the same Parquet out, with the plain per-image loop."""
    cfg, schema = task.cfg, task.cfg.schema()
    cv2.setNumThreads(1)
    src = pq.ParquetFile(task.image_shard)
    rows = 0
    with pq.ParquetWriter(task.out, schema, **F.WRITE_OPTIONS) as writer:
        for batch in src.iter_batches(batch_size=F.BATCH, columns=["image_id", "jpeg"]):
            hogs, hists = [], []
            for data in batch.column(1).to_pylist():
                h, c = plain_features(decode(data, cfg.hog_size), cfg)
                hogs.append(h)
                hists.append(c)
            null = np.zeros(len(hogs), bool)
            writer.write_table(pa.Table.from_arrays([
                batch.column(0).cast(pa.string()),
                F._list_column(np.array(hogs, np.float32), schema.field("hog").type, null),
                F._list_column(np.array(hists, np.float32), schema.field("color_hist").type, null),
                pa.nulls(len(hogs), pa.string())], schema=schema))
            rows += len(hogs)
            on_progress({"done": rows, "ok": rows})
    return {"rows": rows}


# -- measurements ----------------------------------------------------------------------


def per_image_costs(store: Store, cfg: FeatureConfig, n: int = 256) -> dict:
    """Milliseconds per image of each step, one process, on the first n images (best of 3)."""
    from skimage.feature import hog

    cv2.setNumThreads(1)
    jpegs = pq.read_table(store.image_shards(SPLIT)[0], columns=["jpeg"]).column(0).to_pylist()[:n]
    n, size = len(jpegs), cfg.hog_size
    rgb = np.stack([F.decode_resize(j, size) for j in jpegs])
    gray = cv2.cvtColor(rgb.reshape(-1, size, 3), cv2.COLOR_RGB2GRAY).reshape(n, size, size)
    steps = {
        "decode_resize": lambda: [F.decode_resize(j, size) for j in jpegs],
        "hog_batch": lambda: [hog_batch(gray[i:i + F.BATCH], **cfg.hog_args()) for i in range(0, n, F.BATCH)],
        "color_hist_batch": lambda: [color_hist_batch(rgb[i:i + F.BATCH], **cfg.hist_args()) for i in range(0, n, F.BATCH)],
        "skimage_hog": lambda: [hog(g, cfg.orientations, (cfg.cell,) * 2, (cfg.block,) * 2, cfg.block_norm)
                                for g in gray],
        "histogramdd": lambda: [plain_features(im, cfg) for im in rgb],  # includes one skimage hog: subtracted
    }
    out = {name: min(_timed(fn) for _ in range(3)) / n * 1e3 for name, fn in steps.items()}
    out["histogramdd"] -= out["skimage_hog"]
    return {k: round(v, 4) for k, v in out.items()}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def race(store: Store, cfg: FeatureConfig, out: Path, scheduler: str, repeats: int, cpu) -> dict:
    """Ours and plain over all shards, alternately ``repeats`` times.

    Best wall-clock seconds of each, and the CPU seconds (``cpu()``: the running
    total of the processes that do the work) of that run: on a shared machine
    CPU per image is the steadier figure.
    """
    plain_dir = out / "plain"
    tasks = [F.FeatureShard(SPLIT, str(p), str(plain_dir / p.name), {}, cfg) for p in store.image_shards(SPLIT)]

    def ours():
        shutil.rmtree(store.root / "features", ignore_errors=True)
        F.compute_features(store, [SPLIT], cfg, scheduler=scheduler)

    def plain():
        shutil.rmtree(plain_dir, ignore_errors=True)
        plain_dir.mkdir(parents=True)
        run_tasks(plain_task, tasks, stage="plain", scheduler=scheduler)

    def plain_pil():  # last, so that `plain` output stays for the equality check
        pil_dir = out / "plain-pil"
        shutil.rmtree(pil_dir, ignore_errors=True)
        pil_dir.mkdir(parents=True)
        pil_tasks = [F.FeatureShard(SPLIT, t.image_shard, str(pil_dir / Path(t.out).name), {}, cfg) for t in tasks]
        run_tasks(functools.partial(plain_task, decode=pil_decode_resize), pil_tasks, stage="plain-pil",
                  scheduler=scheduler)

    runs = {"ours": [], "plain": [], "plain_pil": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("plain", plain), ("plain_pil", plain_pil)):
            c = cpu()
            wall = _timed(fn)
            runs[name].append((wall, cpu() - c))
    best = {name: min(r) for name, r in runs.items()}
    # the same numbers?
    diff = {}
    for col in ("hog", "color_hist"):
        a = np.array(pq.read_table(store.features.dir(cfg.key, SPLIT) / Path(tasks[0].out).name).column(col).to_pylist())
        b = np.array(pq.read_table(tasks[0].out).column(col).to_pylist())
        diff[col] = float(np.abs(a - b).max())
    return {"ours_s": best["ours"][0], "plain_s": best["plain"][0], "ours_cpu_s": best["ours"][1],
            "plain_cpu_s": best["plain"][1], "plain_pil_s": best["plain_pil"][0],
            "plain_pil_cpu_s": best["plain_pil"][1], "runs": runs, "max_abs_diff": diff}


def warm_cluster_race(store: Store, cfg: FeatureConfig, out: Path, workers: int, repeats: int) -> dict:
    """``race`` on one LocalCluster of ``workers`` processes started beforehand (start-up not counted)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("wdr_pipe.pipeline.features.stage") and __import__("skimage.feature"))
        return race(store, cfg, out, cluster.scheduler_address, repeats,
                    cpu=lambda: sum(client.run(time.process_time).values()))


def cold_runs(store: Store, cfg: FeatureConfig, workers: int) -> dict:
    shutil.rmtree(store.root / "features", ignore_errors=True)
    first = _timed(lambda: F.compute_features(store, [SPLIT], cfg, workers=workers))
    second = _timed(lambda: F.compute_features(store, [SPLIT], cfg, workers=workers))
    return {"first_s": first, "second_s": second}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2400, help="images in the store")
    p.add_argument("--shard-size", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="alternate ours/plain this many times, keep the best")
    p.add_argument("--out", default=str(REPO / "bench-out" / "features"))
    args = p.parse_args()
    out = Path(args.out)
    store = make_store(out / f"fetched-{args.n}-{args.shard_size}", args.n, args.shard_size)
    cfg = FeatureConfig()
    n = sum(pq.read_metadata(s).num_rows for s in store.image_shards(SPLIT))
    print(f"{n} images in {len(store.image_shards(SPLIT))} shards, {args.workers} workers", flush=True)
    costs = per_image_costs(store, cfg)
    print("ms per image, one process:", json.dumps(costs), flush=True)
    one = race(store, cfg, out, "inline", 1, cpu=time.process_time)
    print(f"1 process: ours {n / one['ours_s']:.0f} img/s ({1e3 * one['ours_cpu_s'] / n:.2f} CPU ms/img), "
          f"plain {n / one['plain_s']:.0f} img/s ({1e3 * one['plain_cpu_s'] / n:.2f} CPU ms/img), "
          f"plain with Pillow decode {n / one['plain_pil_s']:.0f} img/s ({1e3 * one['plain_pil_cpu_s'] / n:.2f} CPU ms/img)",
          flush=True)
    warm = warm_cluster_race(store, cfg, out, args.workers, args.repeats)
    cold = cold_runs(store, cfg, args.workers)
    res = {"images": n, "shards": len(store.image_shards(SPLIT)), "workers": args.workers,
           "per_image_ms": costs, "one_process": one, "warm_cluster": warm, "cold": cold,
           "ours_img_s": n / warm["ours_s"], "plain_img_s": n / warm["plain_s"],
           "speedup": warm["plain_s"] / warm["ours_s"], "speedup_one_process": one["plain_s"] / one["ours_s"],
           "speedup_vs_pil": warm["plain_pil_s"] / warm["ours_s"],
           "speedup_vs_pil_one_process": one["plain_pil_s"] / one["ours_s"],
           "cpu_ratio": warm["plain_cpu_s"] / warm["ours_cpu_s"],
           "cold_img_s": n / cold["first_s"], "rerun_fraction": cold["second_s"] / cold["first_s"]}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(f"warm {args.workers}-worker cluster: ours {res['ours_img_s']:.0f} img/s, plain {res['plain_img_s']:.0f} img/s, "
          f"speedup {res['speedup']:.1f}x (1 process: {res['speedup_one_process']:.1f}x), "
          f"CPU per image {1e3 * warm['ours_cpu_s'] / n:.2f} vs {1e3 * warm['plain_cpu_s'] / n:.2f} ms "
          f"({res['cpu_ratio']:.1f}x); against the plain loop with Pillow decode: {res['speedup_vs_pil']:.1f}x "
          f"(1 process: {res['speedup_vs_pil_one_process']:.1f}x); "
          f"max diff {warm['max_abs_diff']}")
    print(f"compute_features with its own cluster: first run {cold['first_s']:.2f}s ({res['cold_img_s']:.0f} img/s), "
          f"second run {cold['second_s']:.3f}s = {100 * res['rerun_fraction']:.2f}% of the first")


if __name__ == "__main__":
    main()
