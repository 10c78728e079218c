"""Loader benchmark: the store loader against ImageFolder and webdataset, side by side, same images.

N generated garment photos (drawn at 320-480 px a side) are fetched by the
real ``wdr-pipe fetch`` (over ``file://`` URLs) into a store at a 299 px
shorter side, JPEG quality 95, in 1,000-row shards of 256-row row groups;
the store's JPEG bytes are then laid out twice more, as an ImageFolder tree
of files and as webdataset tar shards, so all three loaders read the same
bytes. All three are kept under --out between runs.
Every loader delivers batches of 64 training crops at 224 px (random resized
crop, scale 0.08-1, and horizontal flip) from 2 worker processes, normalised
with the ImageNet mean and std:

- ours: ``make_loader`` yields uint8 batches; the main process normalises them
  with ``Normalize`` (on a GPU machine that runs on the device instead);
- ImageFolder + DataLoader: PIL decode, torchvision RandomResizedCrop,
  RandomHorizontalFlip, ToTensor, Normalize (the standard pipeline);
- webdataset: the same torchvision transform over tar shards, shuffle buffer 1000.

Also measured: bare JPEG decode on the same 2 cores (the ceiling), the
decoders one core at a time (simplejpeg, PIL, PIL with draft, OpenCV), our
loader with uint8 output only, normalising in the workers, and zipping in the
wide features, and the per-image CPU cost of the training transform from
JPEG against from raw uint8 (what a cached decoded view could save).

Images/s are counted after the first 3 batches, over 2 epochs; each loader
runs --rounds times, interleaved, and the best round is kept.

    python benchmarks/bench_loader.py --images 3000
    # on a GPU machine: more workers, and a backbone's training steps fed by the loader
    python benchmarks/bench_loader.py --workers 8 --loaders ours --model legacy_xception
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BATCH, SIZE, WORKERS = 64, 224, 2


# -- data ------------------------------------------------------------------------------
DRAWN = (320, 480)  # px, each side of a drawn photo; fetch stores them at a 299 px shorter side
STORED = dict(size=299, resize_mode="shorter", quality=95, shard_size=1000)


def build(out: Path, n: int) -> dict:
    """Store, ImageFolder tree and tar shards of the same n images under ``out`` (reused if complete).

    The store is written by the real fetch (``benchmarks/stores.py``: drawn photos, ``file://`` URLs);
    the tree and the tars are then written from the store's own JPEG bytes, so all three loaders read
    exactly the same bytes. A build of another size, an unfinished one or one of an older version of
    this script (hand-written shards) is removed first.
    """
    import shutil

    import pyarrow.parquet as pq

    from wdr_pipe.cache import Store
    from stores import generated_store

    done = out / f"built-{n}.json"
    paths = {"store": out / "store", "folder": out / "imagefolder", "tars": out / "wds"}
    if done.exists() and json.loads(done.read_text()).get("store") == "fetch":
        return paths
    for old in out.glob("built-*.json"):
        old.unlink()
    for old in paths.values():
        shutil.rmtree(old, ignore_errors=True)
    print(f"drawing {n} images and fetching them into a store under {out} ...", flush=True)
    generated_store(paths["store"], out / "data", {"train": n}, seed=11, size_range=DRAWN, features=False,
                    stats=False, **STORED)
    rows = []
    for shard in Store(paths["store"]).image_shards("train"):
        t = pq.read_table(shard, columns=["image_id", "jpeg", "labels"]).to_pydict()
        rows += zip(t["image_id"], t["jpeg"], t["labels"])
    for i, j, labels in rows:
        d = paths["folder"] / f"c{labels[0]:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.jpg").write_bytes(j)
    paths["tars"].mkdir(parents=True, exist_ok=True)
    per_tar = max(1, n // 12)  # 12 tars: 6 per worker, as the store's 12 row groups
    for k, start in enumerate(range(0, n, per_tar)):
        with tarfile.open(paths["tars"] / f"shard-{k:06d}.tar", "w") as tar:
            for i, j, labels in rows[start:start + per_tar]:
                for name, data in ((f"{i}.jpg", j), (f"{i}.cls", str(labels[0]).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    done.write_text(json.dumps({"images": len(rows), "store": "fetch"}))
    return paths


def jpegs_of(store_root: Path) -> list:
    import pyarrow.parquet as pq

    from wdr_pipe.cache import Store

    return [j for p in Store(store_root).image_shards("train")
            for j in pq.read_table(p, columns=["jpeg"]).column(0).to_pylist()]


# -- decode ------------------------------------------------------------------------------
def _decoders():
    import cv2
    import simplejpeg
    from PIL import Image

    def pil(j):
        return np.asarray(Image.open(io.BytesIO(j)).convert("RGB"))

    def pil_draft(j):
        im = Image.open(io.BytesIO(j))
        im.draft("RGB", (SIZE, SIZE))
        return np.asarray(im.convert("RGB"))

    return {"simplejpeg": lambda j: simplejpeg.decode_jpeg(j, colorspace="RGB"), "PIL": pil, "PIL + draft": pil_draft,
            "cv2.imdecode": lambda j: cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR),
                                                  cv2.COLOR_BGR2RGB)}


_JPEGS: list = []  # set before the decode pool forks, so its processes have the bytes without a transfer


def _decode_part(part) -> int:
    import simplejpeg

    k, step, limit = part
    jpegs = _JPEGS[k::step][:limit]
    for j in jpegs:
        simplejpeg.decode_jpeg(j, colorspace="RGB")
    return len(jpegs)


def decode_rates(jpegs: list) -> dict:
    import cv2

    cv2.setNumThreads(1)
    out = {}
    sample = jpegs[:500]
    for name, fn in _decoders().items():
        t = time.perf_counter()
        for j in sample:
            fn(j)
        out[name] = len(sample) / (time.perf_counter() - t)
    global _JPEGS
    _JPEGS = jpegs
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        pool.map(_decode_part, [(k, WORKERS, 20) for k in range(WORKERS)])  # start-up
        t = time.perf_counter()
        n = sum(pool.map(_decode_part, [(k, WORKERS, len(jpegs)) for k in range(WORKERS)]))
        out["ceiling"] = n / (time.perf_counter() - t)
    return out


def transform_costs(jpegs: list) -> dict:
    """CPU ms per image, one core: train crop from JPEG bytes vs from raw uint8 at the stored size."""
    import cv2

    from wdr_pipe.imaging import decode_rgb as decode_jpeg
    from wdr_pipe.wdr import TrainTransform

    cv2.setNumThreads(1)
    t_f = TrainTransform(SIZE, scale=(0.08, 1.0))
    rng = np.random.default_rng(0)
    sample = jpegs[:400]
    raws = [(decode_jpeg(j).tobytes(), decode_jpeg(j).shape) for j in sample]
    t = time.perf_counter()
    for j in sample:
        t_f(decode_jpeg(j), rng)
    from_jpeg = (time.perf_counter() - t) / len(sample) * 1e3
    t = time.perf_counter()
    for b, shape in raws:
        t_f(np.frombuffer(b, np.uint8).reshape(shape), rng)
    from_raw = (time.perf_counter() - t) / len(sample) * 1e3
    jpeg_bytes = np.mean([len(j) for j in sample])
    raw_bytes = np.mean([len(b) for b, _ in raws])
    return {"from_jpeg_ms": from_jpeg, "from_raw_ms": from_raw, "jpeg_kb": jpeg_bytes / 1024,
            "raw_kb": raw_bytes / 1024}


# -- loaders -----------------------------------------------------------------------------
def tv_transform():
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def run_epochs(loader, epochs: int = 2, warm: int = 3, prepare=None) -> float:
    """Images/s over ``epochs`` passes, the first ``warm`` batches excluded."""
    seen, start, k = 0, None, 0
    for _ in range(epochs):
        for batch in loader:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            if prepare is not None:
                images = prepare(images)
            k += 1
            if k == warm:
                start = time.perf_counter()
            elif k > warm:
                seen += len(images)
    return seen / (time.perf_counter() - start)


def ours(paths, normalize="main", feature_key=None):
    from wdr_pipe.wdr import DataConfig, make_loader

    loader = make_loader(paths["store"], "train", BATCH, WORKERS, config=DataConfig(size=SIZE), scale=(0.08, 1.0),
                         normalize_in_workers=normalize == "workers", feature_key=feature_key)
    prepare = loader.normalize if normalize == "main" else None
    return run_epochs(loader, prepare=prepare)


def imagefolder(paths):
    import torch
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(paths["folder"]), transform=tv_transform())
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                         persistent_workers=True, prefetch_factor=4)
    return run_epochs(loader)


def webdataset(paths):
    import webdataset as wds

    urls = sorted(str(p) for p in paths["tars"].glob("*.tar"))
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(1000).decode("pil")
          .to_tuple("jpg", "cls").map_tuple(tv_transform(), int).batched(BATCH))
    loader = wds.WebLoader(ds, batch_size=None, num_workers=WORKERS, persistent_workers=True, prefetch_factor=4)
    return run_epochs(loader)


def gpu_training(paths, name: str) -> dict:
    """A timm backbone's training steps (bf16 autocast, channels_last) on the GPU: fed a fixed batch
    (what the GPU can take) and fed by our loader (device="cuda", normalised there)."""
    import timm
    import torch
    import torch.nn.functional as F

    from wdr_pipe.wdr import data_config, make_loader

    model = timm.create_model(name, pretrained=False, num_classes=24).cuda().to(memory_format=torch.channels_last)
    cfg = data_config(model)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step(x, y):
        with torch.autocast("cuda", torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    x = torch.randn(BATCH, 3, cfg.size, cfg.size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.zeros(BATCH, 24, device="cuda")
    for k in range(40):
        if k == 10:
            torch.cuda.synchronize()
            start = time.perf_counter()
        step(x, y)
    torch.cuda.synchronize()
    alone = 30 * BATCH / (time.perf_counter() - start)
    loader = make_loader(paths["store"], "train", BATCH, WORKERS, config=cfg, scale=(0.08, 1.0), device="cuda",
                         drop_last=True)  # one batch shape: a new shape costs cuDNN a plan search
    loader.normalize.channels_last = True
    seen, k = 0, 0
    for _ in range(2):
        for batch in loader:
            step(batch["image"], batch["labels"][:, :24])
            k += 1
            if k == 3:
                torch.cuda.synchronize()
                start = time.perf_counter()
            elif k > 3:
                seen += len(batch["image_id"])
    torch.cuda.synchronize()
    fed = seen / (time.perf_counter() - start)
    return {"model": name, "size": cfg.size, "model_alone": alone, "fed_by_loader": fed}


def main() -> None:
    global WORKERS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "loader")
    ap.add_argument("--workers", type=int, default=WORKERS, help="DataLoader workers of every loader")
    ap.add_argument("--loaders", default="", help="comma-separated names (prefixes) of the loaders to run")
    ap.add_argument("--model", default="", help="timm backbone to train on the GPU, fed by our loader")
    args = ap.parse_args()
    WORKERS = args.workers
    import torch

    torch.set_num_threads(WORKERS)
    paths = build(args.out, args.images)
    from wdr_pipe.pipeline.features import compute_features

    key = compute_features(paths["store"], ["train"], scheduler="inline").key  # cached after the first run
    jpegs = jpegs_of(paths["store"])
    print(f"{len(jpegs)} images, {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB mean JPEG; {os.cpu_count()} cores",
          flush=True)
    runs = {"ours (uint8 + Normalize in main)": lambda: ours(paths),
            "ImageFolder + DataLoader": lambda: imagefolder(paths),
            "webdataset": lambda: webdataset(paths),
            "ours (uint8 only)": lambda: ours(paths, normalize=None),
            "ours (normalised in workers)": lambda: ours(paths, normalize="workers"),
            "ours + wide features": lambda: ours(paths, feature_key=key)}
    if args.loaders:
        want = [w.strip() for w in args.loaders.split(",")]
        runs = {k: v for k, v in runs.items() if any(k.startswith(w) for w in want)}
    best = {name: 0.0 for name in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            rate = fn()
            best[name] = max(best[name], rate)
            print(f"round {r + 1}: {name}: {rate:.0f} images/s", flush=True)
    gpu = gpu_training(paths, args.model) if args.model else None
    if gpu:
        print(f"\n{gpu['model']} at {gpu['size']} px, training steps on the GPU: {gpu['model_alone']:.0f} images/s "
              f"on a fixed batch, {gpu['fed_by_loader']:.0f} images/s fed by our loader ({WORKERS} workers)")
    dec = decode_rates(jpegs)
    costs = transform_costs(jpegs)
    base = best.get("ImageFolder + DataLoader") or float("nan")
    print(f"\n| loader (batches of 64 at 224 px, {WORKERS} workers) | images/s | vs ImageFolder |\n|---|---:|---:|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.0f} | {rate / base:.2f}x |")
    print(f"| bare simplejpeg decode, {WORKERS} processes (ceiling) | {dec['ceiling']:.0f} | "
          f"{dec['ceiling'] / base:.2f}x |")
    print("\n| decoder, one core | images/s |\n|---|---:|")
    for name in ("simplejpeg", "PIL", "PIL + draft", "cv2.imdecode"):
        print(f"| {name} | {dec[name]:.0f} |")
    print(f"\ntrain crop per image, one core: {costs['from_jpeg_ms']:.3f} ms from JPEG, {costs['from_raw_ms']:.3f} ms "
          f"from raw uint8; {costs['jpeg_kb']:.0f} KiB JPEG vs {costs['raw_kb']:.0f} KiB raw")
    (args.out / "results.json").write_text(json.dumps({"loaders": best, "decode": dec, "transform": costs, "gpu": gpu,
                                                       "images": len(jpegs), "workers": WORKERS}, indent=2))


if __name__ == "__main__":
    main()
