"""``wdr-pipe browse`` benchmark: a photo query and a tag query over 100,000 stored images, and the start.

A store is written by the real stages (fetch over file:// URLs at 320 px, fetch's default; features;
label statistics) from generated garment photos, and two real runs are trained on it
(``tf_efficientnet_lite0``, ImageNet weights, at its own 224 px, Deep + Wide + Recurrent, one epoch: the
cost of a query does not depend on how well they learned): Deep fixed, which embeds the store and
trains from those embeddings (so a photo's vector is also its deep features, and only the head runs for
its tags), and Deep tuned (the whole model runs for the tags). All kept under --out. The page's answers are then made for --images (100,000) stored images:

- the faiss index: 100,000 random unit vectors of the real embeddings' dimension (1,280), in
  ``IndexFlatIP`` as ``similar`` builds it (synthetic: a flat search reads every vector whatever they
  hold, and embedding 100,000 images takes hours on this CPU);
- the run's probabilities: 100,000 x 228 (FGVC5's label count) drawn from a Beta(0.3, 3), thresholds
  0.5, and 1 to 8 true labels per image (synthetic, for the same reason);
- the model, the embedder and the fetch settings: the real run's and store's.

Through the real server (uvicorn on 127.0.0.1, ``requests``), --rounds queries each, median and best:

- photo query: ``POST /api/search/photo`` with a generated 800 x 1000 JPEG (decode and resize as fetch
  does, the embedding, the run's tags with its wide part, the search, the first page of 24);
- tag query: ``GET /api/search/tags`` for two labels, AND and OR, and one label matched on true labels;
- the start of ``wdr-pipe browse`` with the tuned run over the real store: the first (the run scores every
  stored image and keeps it), then three restarts (read what was kept): seconds to the printed address.

    python benchmarks/bench_browse.py                    # 100,000 images, 15 rounds
    python benchmarks/bench_browse.py --images 20000 --rounds 3   # quick
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from wdr_pipe.browse.server import passive_openmp  # noqa: E402  (as 'wdr-pipe browse' does, before torch is loaded)

passive_openmp()


def build(out: Path):
    """(store, {"fixed": run, "tune": run}, a photo): the real store and runs, made once under ``out``."""
    from wdr_pipe.demo import synth
    from stores import build_store
    from wdr_pipe.wdr.train.loop import train
    from wdr_pipe.wdr.train.config import TrainConfig

    store, runs = out / "store", {deep: out / f"run-{deep}" for deep in ("fixed", "tune")}
    records = synth.make_dataset(out / "data", {"train": 96, "validation": 32, "test": 16}, seed=7,
                                 size_range=(400, 600))
    if not (store / "images" / "test").is_dir():
        print(f"building a store under {out} ...", flush=True)
        build_store(store, out / "data", records, size=320, shard_size=500)
    for deep, run in runs.items():
        if not (run / "result.json").exists():
            print(f"training a run (Deep {deep} + Wide + Recurrent, 224 px, 1 epoch) ...", flush=True)
            train(TrainConfig(store=str(store), out=str(run), pretrained=True, epochs=1, batch_size=32, loader_workers=0,
                              checkpoint_every=0, deep=deep, parts="deep,wide,recurrent"))
    photo = out / "photo.jpg"
    if not photo.exists():
        big = synth.make_dataset(out / "photo", {"photo": 1}, seed=11, size_range=(800, 1000))
        photo.write_bytes((out / "photo" / big[0].path).read_bytes())
    return store, runs, photo


def synthetic(real, n: int, labels: int, model: bool, seed: int = 0):
    """``Answers`` over ``n`` synthetic stored images (index, probabilities, labels) with ``real``'s model."""
    import faiss

    from wdr_pipe.browse.answers import Answers, SplitIndex
    from wdr_pipe.browse.catalog import Catalog, Labels

    rng = np.random.default_rng(seed)
    dim = real.indexes[0].index.d
    x = rng.standard_normal((n, dim), dtype=np.float32)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(dim)
    index.add(x)
    del x
    if model:  # the real run's label space, model and fetch settings
        lab, width = real.labels, len(real.cols)
    else:
        lab = Labels(np.arange(1, labels + 1), [f"label {i}" for i in range(1, labels + 1)], [""] * labels)
        width = labels
    per = rng.integers(1, 9, n)
    offsets = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
    cols = np.argsort(rng.random((n, len(lab))), axis=1)[:, :8]  # 8 distinct labels per image, the first `per` kept
    cols = cols[np.arange(8)[None, :] < per[:, None]].astype(np.int32)
    ids = np.asarray([str(i) for i in range(n)], dtype=object)
    catalog = Catalog(["train"], np.zeros(n, np.int16), ids, [Path("none")], np.zeros(n, np.int32),
                      np.arange(n, dtype=np.int32), ids, np.asarray(["0" * 64] * n, dtype=object),
                      np.full((n, 2), 320, np.int32), offsets, cols, np.ones(n, bool))
    a = Answers(None, lab, catalog, [SplitIndex("train", index, np.arange(n))], real.embeddings, real.model,
                rng.beta(0.3, 3.0, (n, width)).astype(np.float32), np.arange(width), np.full(width, 0.5, np.float32),
                real.spec, real.run)
    a.model_col[:width] = np.arange(width)
    return a


def timed(fn, rounds: int):
    out, times = None, []
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), out


def start(store: Path, run: Path) -> float:
    """Seconds from the command to the address line of ``wdr-pipe browse``."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "wdr_pipe.cli", "browse", "--store", str(store), "--run", str(run),
                          "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         cwd=REPO)
    line = p.stdout.readline()
    seconds = time.perf_counter() - t
    p.terminate()
    p.wait(60)
    if not re.match(r"wdr-pipe browse: http://", line):
        raise SystemExit(f"wdr-pipe browse did not start: {line!r}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "browse")
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=228)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    import requests

    from wdr_pipe.browse import Background, bind, create_app, open_answers
    
    store, runs, photo = build(args.out)
    load = [os.getloadavg()[0]]
    run = runs["tune"]
    for old in (run / "browse").glob("*"):  # so that the first start below is a first start
        old.unlink()
    first = start(store, run)
    again = [start(store, run) for _ in range(3)]
    rows = []
    data = photo.read_bytes()
    for deep, what in (("fixed", "the head on the photo's vector"), ("tune", "the whole model again")):
        real = open_answers(store, str(runs[deep]), workers=0)
        assert real.ready() is None
        with Background(create_app(synthetic(real, args.images, args.labels, True)), bind("127.0.0.1", 0)) as url:
            s = requests.Session()
            post = lambda: s.post(url + "api/search/photo", data=data, timeout=60).json()  # noqa: E731
            post()  # warm-up
            med, best, doc = timed(post, args.rounds)
            rows.append((f"photo query, Deep {deep} run (tags: {what})", med, best, doc))
        del real
    real = open_answers(store, str(runs["fixed"]), workers=0)
    with Background(create_app(synthetic(real, args.images, args.labels, False)), bind("127.0.0.1", 0)) as url:
        s = requests.Session()
        for name, params in (("tag query: 2 labels, AND", {"tags": "3,17"}),
                             ("tag query: 2 labels, OR", {"tags": "3,17", "mode": "or"}),
                             ("tag query: 1 label on true labels", {"tags": "3", "match": "true"}),
                             ("tag query: 2 labels, AND, page 40", {"tags": "3,17", "page": "40"})):
            get = lambda: s.get(url + "api/search/tags", params=params, timeout=60).json()  # noqa: E731
            get()
            med, best, doc = timed(get, args.rounds)
            rows.append((name, med, best, doc))
    load.append(os.getloadavg()[0])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    print(f"\n{args.images:,} stored images ({args.labels} labels for tag queries), {args.rounds} rounds, "
          f"through HTTP on 127.0.0.1; commit {commit.strip() or '?'}, load average {load[0]:.1f} then {load[1]:.1f} "
          f"on {os.cpu_count()} cores\n")
    print("| query | median | best | server's own parts (last query) |\n|---|---:|---:|---|")
    for name, med, best, doc in rows:
        parts = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in doc.get("seconds", {}).items())
        print(f"| {name} | {med * 1000:.0f} ms | {best * 1000:.0f} ms | {parts} |")
    print(f"\nstart of 'wdr-pipe browse --run {run.name}' on {store} ({len(real.catalog)} images): first {first:.1f} s "
          f"(scores every stored image), restarts {', '.join(f'{x:.1f}' for x in again)} s (to the printed address)")


if __name__ == "__main__":
    main()
