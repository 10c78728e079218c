"""Embeddings benchmark: training Deep fixed from cached embeddings against the frozen backbone on every batch,
and similar-image search time as the store grows.

**Training.** A store is written by the real stages (fetch over file:// URLs at a 320 px shorter side,
features at hog_size 64, label statistics) from generated garment photos, under --out (kept between
runs). Two ways of training the same model, ``tf_efficientnet_lite0`` (ImageNet weights) at --size px,
``--deep fixed --parts deep,wide,recurrent``, --epochs epochs, batches of --batch from --workers loader
workers, one process, same machine, one run each:

- cached: ``wdr-pipe embed`` once (recomputed and timed on its own), then ``train`` reads the stored vectors;
- backbone: ``train --stream-images``, the path every Deep-fixed run took before: each batch decoded,
  augmented and passed through the frozen backbone.

An epoch is timed from the progress hook, from the last step of epoch 1 to the last step of epoch 2: the
steps of one epoch plus one validation pass and one checkpoint, without start-up. The cached arm is
trained with --seeds seeds (it is cheap), which gives the seed-to-seed spread of validation micro-F1: the
noise the backbone arm's F1 is compared with.

**Search.** Store-shaped embedding shards of random clustered unit vectors (D = 1280, lite0's width,
float16) are written straight through the cache layer for --search-sizes images, then ``similar()`` by
image id. This store alone is synthetic, on purpose: a search reads only image ids and vectors, and
drawing, fetching and embedding them would take longer than the whole benchmark (the embed stage does
about 20 images/s on this CPU: 20 minutes for 25 k images, over 2.5 hours for 200 k; see
``fake_embeddings``). Timed: the index build (once), its load, and the query (median of 25), with the faiss part alone; the same top-k by chunked torch matrix products for
comparison, on --threads threads each. Flat search is linear in N, so 1 M is projected by a least-squares
line through the sizes.

    python benchmarks/bench_embed.py                         # both parts, CPU
    python benchmarks/bench_embed.py --part search --search-sizes 25000 50000 100000 200000
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# -- training ------------------------------------------------------------------------------------------
def build(out: Path, n_train: int, n_val: int) -> Path:
    from stores import generated_store

    print(f"the store of {n_train} + {n_val} drawn images under {out} (what is committed is reused) ...", flush=True)
    return generated_store(out / "store", out / "data", {"train": n_train, "validation": n_val}, seed=3,
                           size_range=(400, 600), size=320, shard_size=256)


def train_once(store: Path, args, seed: int, stream: bool) -> dict:
    from wdr_pipe.wdr.train.loop import train
    from wdr_pipe.wdr.train.config import TrainConfig

    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(store=str(store), out=str(Path(tmp) / "run"), pretrained=True, deep="fixed",
                          parts="deep,wide,recurrent", image_size=args.size, batch_size=args.batch, lr=1e-3,
                          loader_workers=args.workers, epochs=args.epochs, seed=seed, checkpoint_every=0,
                          stream_images=stream, device=args.device)
        t0 = time.perf_counter()
        result = train(cfg, progress=lambda p: marks.append((time.perf_counter(), p.done)) if p.stage == "train"
                       else None)
        wall = time.perf_counter() - t0
        doc = json.loads((Path(cfg.out) / "config.json").read_text())
    per_epoch = marks[-1][1] // args.epochs
    epoch = marks[-1][0] - marks[per_epoch - 1][0]  # last step of epoch 1 .. last step of the last epoch
    return {"epoch_s": epoch / (args.epochs - 1), "wall_s": wall, "f1": result.details["val_f1_at_0.5"],
            "f1_tuned": result.details["val_f1_tuned"], "embedding_key": doc["embedding_key"],
            "train_images": per_epoch * args.batch}


def training(args) -> None:
    import torch

    from wdr_pipe.wdr.embed.stage import EmbedSpec, compute_embeddings

    store = build(args.out, args.train, args.val)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.train} train + {args.val} validation images, lite0 at {args.size} px, batch {args.batch}, "
          f"{args.workers} loader worker(s), {args.epochs} epochs, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}", flush=True)
    t0 = time.perf_counter()
    emb = compute_embeddings(store, EmbedSpec(pretrained=True, image_size=args.size), ["train", "validation"],
                             device=args.device, rebuild=True)  # timed afresh: the one-off cost
    embed_s = time.perf_counter() - t0
    print(f"embed: {emb.line()} ({emb.details.get('images_per_s')} img/s)", flush=True)
    cached = []
    for seed in range(args.seeds):
        cached.append(train_once(store, args, seed, stream=False))
        assert cached[-1]["embedding_key"] == emb.key
        print(f"cached, seed {seed}: {cached[-1]}", flush=True)
    backbone = train_once(store, args, 0, stream=True)
    assert backbone["embedding_key"] is None
    print(f"backbone every batch, seed 0: {backbone}", flush=True)
    f1s = [c["f1"] for c in cached]
    mean, sd = statistics.mean(f1s), statistics.stdev(f1s) if len(f1s) > 1 else 0.0
    c0 = cached[0]
    print(f"\n| lite0 {args.size} px, Deep fixed + Wide + Recurrent, {args.train} train / {args.val} val, "
          f"{torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.1f} | "
          f"one epoch (steps + validation) | whole run ({args.epochs} epochs, start-up included) | "
          f"val micro-F1 at 0.5 | tuned |\n|---|---:|---:|---:|---:|")
    print(f"| backbone on every batch (`--stream-images`), seed 0 | {backbone['epoch_s']:.2f} s | "
          f"{backbone['wall_s']:.1f} s | {backbone['f1']:.4f} | {backbone['f1_tuned']:.4f} |")
    print(f"| cached embeddings, seed 0 | {c0['epoch_s']:.2f} s | {c0['wall_s']:.1f} s | {c0['f1']:.4f} | "
          f"{c0['f1_tuned']:.4f} |")
    print(f"| cached embeddings, {args.seeds} seeds | {statistics.mean(c['epoch_s'] for c in cached):.2f} s "
          f"(mean) | | {mean:.4f} +- {sd:.4f} | {statistics.mean(c['f1_tuned'] for c in cached):.4f} |")
    print(f"\none epoch: {backbone['epoch_s'] / c0['epoch_s']:.1f}x faster from the cache (seed 0); the one-off "
          f"embed of {args.train + args.val} images took {embed_s:.1f} s "
          f"(= {embed_s / (backbone['epoch_s'] - c0['epoch_s']):.2f} epochs of the difference)")


# -- search --------------------------------------------------------------------------------------------
def fake_embeddings(root: Path, n: int, dim: int = 1280, shard: int = 10_000) -> str:
    """A store of ``n`` images whose embedding shards hold random clustered unit vectors (float16).

    Synthetic on purpose, unlike the training part's store (``build``: the real stages): the search
    sizes are 25 k - 1 M images, and drawing, fetching and embedding that many (about 20 images/s
    for lite0 on this CPU: 20 minutes for 25 k, hours beyond 100 k) would dwarf a measurement that
    reads only image ids and vectors.
    So the image shards hold placeholder rows (no decodable JPEG) and their commit markers are written
    here, not by fetch; the embedding shards follow the embed stage's schema, Parquet options and
    commit marker (naming the image shard they derive from), so ``build_index`` and ``similar`` read
    them as the stage's own. Nothing that decodes images can use this store.
    """
    import numpy as np
    import pyarrow as pa

    from wdr_pipe.cache import Store, commit_path, shard_identity, write_config
    from wdr_pipe.cache.atomic import write_parquet_atomic, write_text_atomic
    from wdr_pipe.cache.schema import IMAGES, image_embeddings_schema
    from wdr_pipe.wdr.embed.stage import WRITE_OPTIONS, EmbedConfig
    from wdr_pipe.wdr.data.transforms import DataConfig

    store = Store(root, create=True)
    cfg = EmbedConfig.of("tf_efficientnet_lite0", "bench", DataConfig(), "float16")
    if store.embeddings.config_path(cfg.key).exists():
        return cfg.key
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    schema = image_embeddings_schema(dim, "float16")
    for s, a in enumerate(range(0, n, shard)):
        m = min(shard, n - a)
        ids = [str(i) for i in range(a, a + m)]
        images = pa.table({"image_id": ids, "jpeg": [b"\xff\xd8"] * m, "width": [1] * m, "height": [1] * m,
                           "src_width": [1] * m, "src_height": [1] * m, "url": [f"http://x/{i}.jpg" for i in ids],
                           "sha256": [""] * m, "labels": [[1]] * m}, schema=IMAGES)
        path = store.image_shard_path("train", s)
        write_parquet_atomic(images, path)
        write_text_atomic(commit_path(path), json.dumps({"shard": s, "ok": m}))
        x = centres[rng.integers(0, len(centres), m)] + 0.5 * rng.standard_normal((m, dim)).astype(np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), dim)
        out = store.embeddings.dir(cfg.key, "train") / path.name
        write_parquet_atomic(pa.Table.from_arrays([pa.array(ids), col, pa.nulls(m, pa.string())], schema=schema), out,
                             **WRITE_OPTIONS)  # as the embed stage writes them
        write_text_atomic(commit_path(out), json.dumps({"rows": m, "errors": 0, "source": shard_identity(path)}))
    write_config(store.embeddings.config_path(cfg.key), cfg, dim=dim)
    return cfg.key


def search(args) -> None:
    import numpy as np
    import torch

    from wdr_pipe.wdr.embed.search import SearchIndex, _faiss, build_index, similar

    threads = args.threads or 1
    _faiss().omp_set_num_threads(threads)  # one query: OpenMP threads only wait on a busy machine
    torch.set_num_threads(threads)
    print(f"search: faiss and torch on {threads} thread(s), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for n in args.search_sizes:
        root = args.out / f"search-{n}"
        key = fake_embeddings(root, n)
        t0 = time.perf_counter()
        built = build_index(root, key, rebuild=True)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = SearchIndex(root, key)
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        total, faiss_s = [], []
        for q in rng.integers(0, n, 25):
            t0 = time.perf_counter()
            found = similar(root, str(q), key=key, k=10, index=index)
            total.append(time.perf_counter() - t0)
            faiss_s.append(found.seconds["search"])
        x = torch.from_numpy(index.index.reconstruct_n(0, n))
        qv = x[0]

        def matmul(chunk=65536):
            best_v, best_i = [], []
            for a in range(0, n, chunk):
                v, i = torch.topk(x[a:a + chunk] @ qv, 11)
                best_v.append(v)
                best_i.append(i + a)
            return torch.cat(best_i)[torch.topk(torch.cat(best_v), 11).indices]

        torch_s = []
        for _ in range(10):
            t0 = time.perf_counter()
            matmul()
            torch_s.append(time.perf_counter() - t0)
        row = {"n": n, "build_s": build_s, "load_s": load_s, "query_ms": 1000 * statistics.median(total),
               "faiss_ms": 1000 * statistics.median(faiss_s), "torch_ms": 1000 * statistics.median(torch_s),
               "rows": built.counts["ok"]}
        rows.append(row)
        print(row, flush=True)
        index = x = None  # freed before the next size (matmul above reads x)
    ns = np.array([r["n"] for r in rows], float)
    print("\n| stored images | index build (once) | index load | query (similar by id, median) | of which faiss "
          "search | torch chunked matmul |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['build_s']:.2f} s | {r['load_s']:.3f} s | {r['query_ms']:.1f} ms | "
              f"{r['faiss_ms']:.1f} ms | {r['torch_ms']:.1f} ms |")
    proj = {}
    for name in ("build_s", "load_s", "query_ms", "faiss_ms", "torch_ms"):
        slope, icept = np.polyfit(ns, [r[name] for r in rows], 1)
        proj[name] = slope * 1e6 + icept
    print(f"| 1,000,000 (projected) | {proj['build_s']:.1f} s | {proj['load_s']:.2f} s | {proj['query_ms']:.0f} ms | "
          f"{proj['faiss_ms']:.0f} ms | {proj['torch_ms']:.0f} ms |")


def main() -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "wdr-bench-embed")
    ap.add_argument("--part", choices=["train", "search", "both"], default="both")
    ap.add_argument("--train", type=int, default=1024, help="training images in the generated store")
    ap.add_argument("--val", type=int, default=256, help="validation images")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2, help="at least 2: the first epoch (start-up) is not timed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--search-sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000, 200_000])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch (and faiss) threads [default: torch's own for training, 1 for search]")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs: at least 2 (an epoch is timed after the first)")
    logging.getLogger("wdr_pipe").setLevel(logging.ERROR)
    if args.part in ("train", "both"):
        training(args)
    if args.part in ("search", "both"):
        search(args)


if __name__ == "__main__":
    main()
