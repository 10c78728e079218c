"""Fetch benchmark: ``wdr-pipe fetch`` against img2dataset, side by side on loopback.

Both download the same N generated 800 x 1000 JPEGs from a loopback server
running in its own process (``wdr-pipe serve``), with the
same process count, output size (299 px shorter side), Parquet output, JPEG
quality 95 and rows per shard. Reported per tool: images/s (wall clock of
the whole command, start-up included) and CPU-seconds per image of the
tool's whole process tree (the server is measured apart).

img2dataset lives in its own virtualenv because its pins may clash with ours::

    python3 -m venv bench-out/i2d-venv && bench-out/i2d-venv/bin/pip install img2dataset

Run (images are drawn once and cached under --out)::

    python benchmarks/bench_fetch.py --n 4000
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import requests

from wdr_pipe.cache.store import SHARD_RE

REPO = Path(__file__).resolve().parents[1]
SPLIT = "bench"


def _draw(args):
    path, seed = args
    from wdr_pipe.demo import synth

    if not path.exists():
        rng = np.random.default_rng([seed, 7])
        img = synth.draw_image(synth.sample_garment(rng), 800, 1000, seed)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(synth.encode_jpeg(img, 90))
        tmp.replace(path)


def make_images(root: Path, n: int, procs: int = 2) -> list:
    """Draw n 800 x 1000 JPEGs under root/images/bench/ (kept between runs); returns their relpaths."""
    folder = root / "images" / SPLIT
    folder.mkdir(parents=True, exist_ok=True)
    rels = [f"images/{SPLIT}/{i}.jpg" for i in range(1, n + 1)]
    todo = [(root / r, i) for i, r in enumerate(rels, start=1) if not (root / r).exists()]
    if todo:
        print(f"drawing {len(todo)} images under {folder} ...", flush=True)
        with multiprocessing.Pool(procs) as pool:
            pool.map(_draw, todo, chunksize=16)
    return rels


def start_server(root: Path):
    proc = subprocess.Popen([sys.executable, "-m", "wdr_pipe.cli", "serve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


def warm_server(base: str, rels: list) -> None:
    """Fetch every file once so both tools are served from the server's memory."""
    with requests.Session() as s:
        for r in rels:
            s.get(f"{base}/{r}", timeout=10).raise_for_status()


def cpu_of(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def run_measured(cmd, log_path: Path, env=None) -> dict:
    """Run cmd; wall seconds and CPU seconds of its whole process tree.

    Two lower bounds of the tree's CPU, the larger one is reported: psutil
    samples of every process seen (misses the last < 0.1 s of each), and
    RUSAGE_CHILDREN (misses processes their parents never waited for).
    """
    seen = {}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    seen[(p.pid, p.create_time())] = cpu_of(p)
                except psutil.Error:
                    pass
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rusage = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"{cmd[0]} failed (rc {proc.returncode}); log {log_path}:\n{tail}")
    return {"wall": wall, "cpu": max(rusage, sum(seen.values())), "cpu_psutil": sum(seen.values()),
            "cpu_rusage": rusage, "procs": len(seen)}


def check_output(files, status_col=None) -> dict:
    """Rows written and the shorter sides of the stored images."""
    ok, short = 0, set()
    for f in files:
        t = pq.read_table(f, columns=["width", "height"] + ([status_col] if status_col else [])).to_pylist()
        for row in t:
            if status_col and row[status_col] != "success":
                continue
            ok += 1
            short.add(min(row["width"], row["height"]))
    return {"ok": ok, "short_sides": sorted(short)}


def run_wdr(args, csv_path: Path, out: Path) -> dict:
    store = out / "wdr-store"
    shutil.rmtree(store, ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("wdr-pipe")), "fetch", str(csv_path), "--store", str(store),
           "--size", "299", "--resize-mode", "shorter", "--quality", "95", "--workers", str(args.processes),
           "--threads", str(args.wdr_threads), "--shard-size", str(args.shard_size)]
    res = run_measured(cmd, out / "wdr.log")
    res.update(check_output(sorted(f for f in (store / "images" / SPLIT).glob("part-*.parquet")
                                   if SHARD_RE.match(f.name))))
    res["cmd"] = cmd
    return res


I2D_SCRIPT = """
import json, sys
from img2dataset import download
download(**json.loads(sys.argv[1]))
"""


def run_i2d(args, csv_path: Path, out: Path) -> dict:
    folder = out / "i2d-out"
    shutil.rmtree(folder, ignore_errors=True)
    kw = dict(url_list=str(csv_path), input_format="csv", url_col="url", output_folder=str(folder),
              output_format="parquet", processes_count=args.processes, thread_count=args.i2d_threads,
              image_size=299, resize_mode="keep_ratio", encode_quality=95, encode_format="jpg",
              number_sample_per_shard=args.shard_size, timeout=10, retries=0, enable_wandb=False,
              distributor="multiprocessing")
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    cmd = [str(Path(args.i2d_venv) / "bin" / "python"), "-c", I2D_SCRIPT, json.dumps(kw)]
    res = run_measured(cmd, out / "i2d.log", env=env)
    res.update(check_output(sorted(folder.glob("*.parquet")), status_col="status"))
    res["cmd"] = kw
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000, help="images (at least 2000 for a steady rate)")
    p.add_argument("--out", default=str(REPO / "bench-out" / "fetch"), help="images, outputs and logs")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--wdr-threads", type=int, default=16)
    p.add_argument("--i2d-threads", type=int, default=32)
    p.add_argument("--shard-size", type=int, help="rows per shard for both tools (default: n / 8)")
    p.add_argument("--i2d-venv", default=str(REPO / "bench-out" / "i2d-venv"))
    p.add_argument("--only", choices=["img2dataset", "wdr-pipe"], help="run one tool only")
    p.add_argument("--repeats", type=int, default=1, help="rounds, alternating the order; medians reported")
    args = p.parse_args()
    args.shard_size = args.shard_size or max(1, args.n // 8)
    out = Path(args.out)
    data = out / "data"
    rels = make_images(data, args.n, args.processes)

    server, base = start_server(data)
    try:
        warm_server(base, rels)
        csv_path = out / f"{SPLIT}.csv"
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "url"])
            w.writerows((str(i), f"{base}/{r}") for i, r in enumerate(rels, start=1))
        sproc = psutil.Process(server.pid)
        tools = [t for t in (("img2dataset", run_i2d), ("wdr-pipe", run_wdr)) if args.only in (None, t[0])]
        runs = []
        for k in range(args.repeats):
            for name, fn in (tools if k % 2 == 0 else tools[::-1]):  # alternate the order
                s0, load = cpu_of(sproc), os.getloadavg()[0]
                print(f"round {k + 1}: running {name} ...", flush=True)
                r = fn(args, csv_path, out)
                r.update(tool=name, round=k + 1, load=load, server_cpu=cpu_of(sproc) - s0,
                         ips=r["ok"] / r["wall"], cpu_ms=1000 * r["cpu"] / max(r["ok"], 1))
                runs.append(r)
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(f"\n{args.n} images of 800x1000 on loopback, {args.processes} processes, 299 px shorter side, "
          f"quality 95, {args.shard_size} rows per shard; {os.cpu_count()} cores")
    print(f"{'round':>5} {'tool':<12} {'ok':>6} {'wall s':>7} {'images/s':>9} {'CPU s':>7} {'CPU ms/img':>10} "
          f"{'server ms/img':>13} {'load':>5}  shorter sides")
    for r in runs:
        print(f"{r['round']:>5} {r['tool']:<12} {r['ok']:>6} {r['wall']:>7.1f} {r['ips']:>9.1f} {r['cpu']:>7.1f} "
              f"{r['cpu_ms']:>10.2f} {1000 * r['server_cpu'] / max(r['ok'], 1):>13.2f} {r['load']:>5.1f}  "
              f"{r['short_sides']}")
    med = {name: {k: statistics.median(r[k] for r in runs if r["tool"] == name) for k in ("ips", "cpu_ms")}
           for name, _ in tools}
    for name, m in med.items():
        print(f"median {name:<12} {m['ips']:.1f} images/s, {m['cpu_ms']:.2f} CPU ms/image")
    if len(med) == 2:
        w, i = med["wdr-pipe"], med["img2dataset"]
        print(f"wdr-pipe / img2dataset (medians): {w['ips'] / i['ips']:.2f}x images/s, "
              f"{i['cpu_ms'] / w['cpu_ms']:.2f}x less CPU per image")
    results = {"runs": runs, "medians": med, "args": vars(args)}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
