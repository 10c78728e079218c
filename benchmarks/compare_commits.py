"""The fetch and loader benchmarks of two commits, side by side in one run.

Each commit is checked out in its own worktree under ``bench-out/compare/``
and run with the same interpreter, its own ``benchmarks/`` scripts and its
own ``wdr_pipe`` (``PYTHONPATH``). Rounds alternate the order of the two
commits; both read the same drawn images and the same loader store, so the
only difference is the code. Reported: the medians per commit and their ratio.

    python benchmarks/compare_commits.py b9184ad            # against HEAD's working tree
    python benchmarks/compare_commits.py b9184ad --rounds 3 --fetch-images 4000 --loader-images 3000
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOADER_BATCH = 64  # bench_loader.BATCH of both commits

LOADER = """
import json, sys
sys.path.insert(0, {bench!r})
import torch
import bench_loader as b
torch.set_num_threads(b.WORKERS)
paths = b.build(__import__("pathlib").Path({out!r}), {n})
print(json.dumps({{"ips": b.ours(paths)}}))
"""

BUILD = """
import sys
sys.path.insert(0, {bench!r})
import bench_loader as b
b.build(__import__("pathlib").Path({out!r}), {n})
"""


def resolve(rev: str) -> str:
    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode:
        raise SystemExit(f"compare_commits.py: {rev!r} is not a commit of {REPO}; pass a hash, tag or branch")
    return found.stdout.strip()


def worktree(sha: str) -> Path:
    path = REPO / "bench-out" / "compare" / sha
    if not path.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), sha], check=True,
                       capture_output=True)
    return path


def run(src: Path, cmd: list, timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    p = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise SystemExit(f"{src}: {' '.join(cmd[:3])} failed:\n{(p.stderr.strip() or p.stdout)[-2000:]}")
    return p.stdout


def fetch_rate(src: Path, n: int, out: Path) -> dict:
    text = run(src, [sys.executable, str(src / "benchmarks" / "bench_fetch.py"), "--only", "wdr-pipe", "--n", str(n),
                     "--out", str(out)], timeout=1800)
    m = re.search(r"median wdr-pipe\s+([\d.]+) images/s, ([\d.]+) CPU ms/image", text)
    return {"ips": float(m.group(1)), "cpu_ms": float(m.group(2))}


def loader_rate(src: Path, n: int, out: Path) -> dict:
    code = LOADER.format(bench=str(src / "benchmarks"), out=str(out), n=n)
    return json.loads(run(src, [sys.executable, "-c", code], timeout=1800).strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="the commit to compare against (e.g. the one before a refactor)")
    ap.add_argument("--new", default="", help="the other commit (default: this working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fetch-images", type=int, default=4000)
    ap.add_argument("--loader-images", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "compare")
    args = ap.parse_args()
    args.out = args.out.resolve()  # each side runs in its own worktree
    for name in ("rounds", "fetch_images", "loader_images"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.loader_images <= 2 * LOADER_BATCH:
        ap.error(f"--loader-images {args.loader_images}: use more than {2 * LOADER_BATCH} (bench_loader.py times "
                 f"2 epochs of batches of {LOADER_BATCH} after their first 3)")
    shas = {"old": resolve(args.old), "new": resolve(args.new) if args.new else None}
    sides = {"old": worktree(shas["old"]), "new": worktree(shas["new"]) if args.new else REPO}
    # each side's loader build once, before the rounds: a side whose build does not accept the
    # other's store (an older hand-written one) rebuilds it here, so every round reads one store
    for src in (sides["old"], sides["new"]):
        run(src, [sys.executable, "-c", BUILD.format(bench=str(src / "benchmarks"), out=str(args.out / "loader"),
                                                     n=args.loader_images)], timeout=3600)
    runs = []
    for k in range(args.rounds):
        for name in (("old", "new") if k % 2 == 0 else ("new", "old")):
            src = sides[name]
            f = fetch_rate(src, args.fetch_images, args.out / "fetch")
            ld = loader_rate(src, args.loader_images, args.out / "loader")
            runs.append({"round": k + 1, "side": name, "fetch_ips": f["ips"], "fetch_cpu_ms": f["cpu_ms"],
                         "loader_ips": ld["ips"], "load": os.getloadavg()[0]})
            print(f"round {k + 1} {name}: fetch {f['ips']:.0f} img/s ({f['cpu_ms']:.2f} CPU ms/img), "
                  f"loader {ld['ips']:.0f} img/s, load {runs[-1]['load']:.1f}", flush=True)
    med = {s: {m: statistics.median(r[m] for r in runs if r["side"] == s)
               for m in ("fetch_ips", "fetch_cpu_ms", "loader_ips")} for s in sides}
    print(f"\n| medians of {args.rounds} rounds | {args.old} | {args.new or 'working tree'} | new / old |")
    print("|---|---:|---:|---:|")
    for m, label in (("fetch_ips", "fetch, images/s"), ("fetch_cpu_ms", "fetch, CPU ms/image"),
                     ("loader_ips", "loader (ours), images/s")):
        print(f"| {label} | {med['old'][m]:.1f} | {med['new'][m]:.1f} | {med['new'][m] / med['old'][m]:.2f} |")
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "medians": med, "old": args.old,
                                                       "new": args.new or "working tree"}, indent=2))


if __name__ == "__main__":
    main()
