"""The fetch, loader and training benchmarks (and the fast test lane) of two commits, side by side in one run.

Each commit is checked out in its own worktree under ``bench-out/compare/``
and run with the same interpreter, its own ``benchmarks/`` scripts and its
own ``wdr_pipe`` (``PYTHONPATH``). Rounds alternate the order of the two
commits; both read the same drawn images and the same stores, so the only
difference is the code. Reported: one Markdown table of the medians per
commit, their ratio and every round's figure.

``--parts`` picks what runs (default ``fetch,loader,train``):

- fetch: ``bench_fetch.py --only wdr-pipe``, images/s and CPU ms/image;
- loader: ``bench_loader.py``'s loader (ours), images/s;
- train: the trainer's images/s for ``--deep tune`` and ``--deep fixed``, timed
  as ``bench_train.py`` times it (over the second of 2 epochs, after its first
  step), each commit with its own ``bench_train.build`` and ``config`` and then
  the same explicit single-phase settings (``PIN``: the newer trainer settles on
  ``--recipe single``, the older one has no other); both sides must end with
  the same settings and steps, or the run stops;
- suite: wall time of ``pytest -m "not slow"`` (minutes a round; not a default).

    python benchmarks/compare_commits.py 0fd436a            # against this working tree
    python benchmarks/compare_commits.py 0fd436a --rounds 3 --parts fetch,loader,train,suite
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("fetch", "loader", "train", "suite")
DEEP = ("tune", "fixed")
LOADER_BATCH = 64  # bench_loader.BATCH of both commits
# (part, metric, row label) in the table's order
ROWS = (("fetch", "fetch_ips", "fetch, images/s"), ("fetch", "fetch_cpu_ms", "fetch, CPU ms/image"),
        ("loader", "loader_ips", "loader (ours), images/s"),
        ("train", "train_tune_ips", "train --deep tune, images/s"),
        ("train", "train_fixed_ips", "train --deep fixed, images/s"),
        ("suite", "suite_s", 'suite -m "not slow", s'))
# the training settings both sides run with, on top of their bench_train.config (a field a commit's
# TrainConfig lacks is skipped: before recipes every run was single-phase, BatchNorm training, no patience);
# pretrained: the ImageNet weights both commits ship offline (the older config defaulted to random ones)
PIN = dict(recipe="single", pretrained=True, epochs=2, lr=3e-4, optimizer="nadam", weight_decay=0.0,
           sched="cosine", warmup_epochs=0.0, bn="train", patience=0, eval_every=0, checkpoint_every=0,
           thresholds="none")
# the settings that must come out the same on both sides (TrainConfig fields of both commits)
SAME = ("backbone", "pretrained", "weights", "deep", "parts", "head", "drop_rate", "image_size", "stream_images",
        "epochs", "batch_size", "lr", "optimizer", "weight_decay", "sched", "warmup_epochs", "grad_accum",
        "clip_grad", "ema", "loss", "weighting", "pos_weight", "labels", "amp", "compile", "device", "eval_every",
        "checkpoint_every", "thresholds")

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

TRAIN_BUILD = """
import sys
sys.path.insert(0, {bench!r})
import bench_train as b
b.build(__import__("pathlib").Path({out!r}), {n})
"""

# one trainer run of one commit: its own store build (reused) and config, the pinned settings, and the rate
# over epoch 2 from the progress hook's train steps alone (the first --deep fixed run also reports embedding)
TRAIN = """
import argparse, dataclasses, json, logging, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {bench!r})
import bench_train as b
try:
    from wdr_pipe.wdr.train.loop import train
except ImportError:  # before the restructuring
    from wdr_pipe.wdr.train import train
logging.getLogger("wdr_pipe").setLevel(logging.ERROR)
args = argparse.Namespace(size={size}, batch={batch}, workers={workers}, device="auto")
store = b.build(Path({out!r}), {n})
marks = []
with tempfile.TemporaryDirectory() as tmp:
    cfg = b.config(store, Path(tmp) / "run", {deep!r}, args)
    names = {{f.name for f in dataclasses.fields(cfg)}}
    cfg = dataclasses.replace(cfg, **{{k: v for k, v in {pin!r}.items() if k in names}})
    train(cfg, progress=lambda p: p.stage == "train" and marks.append((time.perf_counter(), p.done, p.total)))
per_epoch = marks[-1][2] // cfg.epochs
t0 = next(t for t, done, _ in marks if done == per_epoch + 1)
t1 = next(t for t, done, _ in reversed(marks) if done == marks[-1][2])
settings = {{k: getattr(cfg, k) for k in {same!r}}}
settings.update(recipe=getattr(cfg, "recipe", "single"), bn=getattr(cfg, "bn", "train"),
                loader_workers=getattr(cfg, "loader_workers", getattr(cfg, "workers", None)))
print(json.dumps({{"ips": (per_epoch - 1) * cfg.batch_size / (t1 - t0), "steps_per_epoch": per_epoch,
                  "settings": settings}}, default=str))
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


def snippet(src: Path, code: str, timeout: float = 3600) -> dict:
    return json.loads(run(src, [sys.executable, "-c", code], timeout=timeout).strip().splitlines()[-1])


def fetch_rate(src: Path, n: int, out: Path) -> dict:
    text = run(src, [sys.executable, str(src / "benchmarks" / "bench_fetch.py"), "--only", "wdr-pipe", "--n", str(n),
                     "--out", str(out)], timeout=1800)
    m = re.search(r"median wdr-pipe\s+([\d.]+) images/s, ([\d.]+) CPU ms/image", text)
    return {"fetch_ips": float(m.group(1)), "fetch_cpu_ms": float(m.group(2))}


def loader_rate(src: Path, n: int, out: Path) -> dict:
    return {"loader_ips": snippet(src, LOADER.format(bench=str(src / "benchmarks"), out=str(out), n=n), 1800)["ips"]}


def train_rates(src: Path, args) -> dict:
    """Images/s of the commit's trainer for each --deep, with the steps and settings it ran (checked by ``same``)."""
    out = {}
    for deep in DEEP:
        got = snippet(src, TRAIN.format(bench=str(src / "benchmarks"), out=str(train_store(args)), n=args.train_images,
                                        size=args.train_size, batch=args.train_batch, workers=args.train_workers,
                                        deep=deep, pin=PIN, same=SAME))
        out[f"train_{deep}_ips"] = got["ips"]
        out[f"train_{deep}_ran"] = {"steps_per_epoch": got["steps_per_epoch"], **got["settings"]}
    return out


def suite_time(src: Path) -> dict:
    t0 = time.perf_counter()
    text = run(src, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "tests"],
               timeout=7200)
    return {"suite_s": time.perf_counter() - t0, "suite_line": text.strip().splitlines()[-1]}


def train_store(args) -> Path:
    return args.out / f"train-{args.train_images}"  # bench_train's build reuses whatever store is there


def same(runs: list) -> None:
    """Stop where the two sides trained with different settings or steps: their rates would not compare."""
    for deep in DEEP:
        ran = {r["side"]: r[f"train_{deep}_ran"] for r in runs if f"train_{deep}_ran" in r}
        if len(ran) == 2 and ran["old"] != ran["new"]:
            diff = {k: (ran["old"].get(k), ran["new"].get(k)) for k in ran["old"].keys() | ran["new"].keys()
                    if ran["old"].get(k) != ran["new"].get(k)}
            raise SystemExit(f"compare_commits.py: --deep {deep} trained differently on the two sides "
                             f"(old, new): {diff}; pin the setting in PIN")


def line(part: str, r: dict) -> str:
    if part == "fetch":
        return f"fetch {r['fetch_ips']:.0f} img/s ({r['fetch_cpu_ms']:.2f} CPU ms/img)"
    if part == "loader":
        return f"loader {r['loader_ips']:.0f} img/s"
    if part == "train":
        return "train " + ", ".join(f"{d} {r[f'train_{d}_ips']:.1f} img/s" for d in DEEP)
    return f"suite {r['suite_s']:.0f} s ({r['suite_line']})"


def table(args, runs: list, parts: list) -> tuple:
    rows = [(m, label) for part, m, label in ROWS if part in parts]
    med = {s: {m: statistics.median(r[m] for r in runs if r["side"] == s) for m, _ in rows} for s in ("old", "new")}
    out = [f"| medians of {args.rounds} round{'s' if args.rounds != 1 else ''} | {args.old} | "
           f"{args.new or 'working tree'} | new / old | rounds: old; new |", "|---|---:|---:|---:|---|"]
    for m, label in rows:
        each = "; ".join(", ".join(f"{r[m]:.1f}" for r in runs if r["side"] == s) for s in ("old", "new"))
        out.append(f"| {label} | {med['old'][m]:.1f} | {med['new'][m]:.1f} | {med['new'][m] / med['old'][m]:.2f} "
                   f"| {each} |")
    if "train" in parts:
        out.append(f"\ntrain: {args.train_images} images, tf_efficientnet_lite0 at {args.train_size} px, batch "
                   f"{args.train_batch}, {args.train_workers} loader worker(s), pretrained, one phase of 2 epochs; "
                   f"images/s over epoch 2 after its first step")
    return "\n".join(out), med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="the commit to compare against (e.g. the one before a refactor)")
    ap.add_argument("--new", default="", help="the other commit (default: this working tree)")
    ap.add_argument("--parts", default="fetch,loader,train", help=f"what to compare, of {','.join(PARTS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fetch-images", type=int, default=4000)
    ap.add_argument("--loader-images", type=int, default=3000)
    ap.add_argument("--train-images", type=int, default=384, help="training images (bench_train.py --train)")
    ap.add_argument("--train-size", type=int, default=128, help="image size in px (bench_train.py --size)")
    ap.add_argument("--train-batch", type=int, default=32, help="batch (bench_train.py --batch)")
    ap.add_argument("--train-workers", type=int, default=1, help="loader workers (bench_train.py --workers)")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "compare")
    args = ap.parse_args()
    args.out = args.out.resolve()  # each side runs in its own worktree
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts or len(set(parts)) != len(parts):
        ap.error(f"--parts {args.parts}: use one or more of {','.join(PARTS)}, each once")
    for name in ("rounds", "fetch_images", "loader_images", "train_images", "train_size", "train_batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if "loader" in parts and args.loader_images <= 2 * LOADER_BATCH:
        ap.error(f"--loader-images {args.loader_images}: use more than {2 * LOADER_BATCH} (bench_loader.py times "
                 f"2 epochs of batches of {LOADER_BATCH} after their first 3)")
    if args.train_workers < 0:
        ap.error(f"--train-workers {args.train_workers}: use 0 or more")
    if "train" in parts and (args.train_images % args.train_batch or args.train_images < 2 * args.train_batch):
        ap.error(f"--train-images {args.train_images}: use a multiple of --train-batch {args.train_batch}, at least "
                 "2 batches (both sides cut an epoch into the same full batches; the rate is timed after its first)")
    shas = {"old": resolve(args.old), "new": resolve(args.new) if args.new else None}
    sides = {"old": worktree(shas["old"]), "new": worktree(shas["new"]) if args.new else REPO}
    args.out.mkdir(parents=True, exist_ok=True)
    # each side's builds once, before the rounds: a side whose build does not accept the other's store (an
    # older hand-written one) rebuilds it here, so every round reads one store
    for src in (sides["old"], sides["new"]):
        bench = str(src / "benchmarks")
        if "loader" in parts:
            run(src, [sys.executable, "-c", BUILD.format(bench=bench, out=str(args.out / "loader"),
                                                         n=args.loader_images)], timeout=3600)
        if "train" in parts:
            run(src, [sys.executable, "-c", TRAIN_BUILD.format(bench=bench, out=str(train_store(args)),
                                                               n=args.train_images)], timeout=3600)
    runs = []
    for k in range(args.rounds):
        for name in (("old", "new") if k % 2 == 0 else ("new", "old")):
            src, r = sides[name], {"round": k + 1, "side": name}
            if "fetch" in parts:
                r.update(fetch_rate(src, args.fetch_images, args.out / "fetch"))
            if "loader" in parts:
                r.update(loader_rate(src, args.loader_images, args.out / "loader"))
            if "train" in parts:
                r.update(train_rates(src, args))
            if "suite" in parts:
                r.update(suite_time(src))
            r["load"] = os.getloadavg()[0]
            runs.append(r)
            (args.out / "results.json").write_text(json.dumps({"runs": runs, "old": args.old,
                                                               "new": args.new or "working tree"}, indent=2))
            print(f"round {k + 1} {name}: " + ", ".join(line(p, r) for p in parts) + f", load {r['load']:.1f}",
                  flush=True)
            same(runs)
    text, med = table(args, runs, parts)
    print("\n" + text)
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "medians": med, "old": args.old,
                                                       "new": args.new or "working tree", "pin": PIN}, indent=2))


if __name__ == "__main__":
    main()
