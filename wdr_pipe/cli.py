"""The ``wdr-pipe`` command: parses flags and delegates to the library.

Every command has help text with an example. A ``UserError`` raised by the
library becomes a one-line ``click.ClickException``; progress from the
library's hook is drawn as a bar on a terminal and logged otherwise.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

import click

from . import __version__
from .errors import UserError
from .progress import Progress

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)
log = logging.getLogger("wdr_pipe")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors a user can fix into one-line CLI errors."""
    try:
        yield
    except UserError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; finished shards are kept, run the same command again to resume")


class ProgressBar:
    """Renders ``Progress`` totals: a tqdm bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, desc: str, unit: str = "img"):
        self.desc, self.unit = desc, unit
        self.bar = None
        self.tty = sys.stderr.isatty()
        self.last_log = 0.0
        self.finished = False

    def __call__(self, p: Progress) -> None:
        import time

        if self.tty:
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=p.total, desc=self.desc, unit=self.unit, dynamic_ncols=True)
            if p.total is not None and self.bar.total != p.total:
                self.bar.total = p.total
            self.bar.n = p.done
            self.bar.set_postfix(ok=p.ok, failed=p.failed, refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self.last_log > 5 or (p.total and p.done >= p.total and not self.finished):
            self.last_log = time.monotonic()
            self.finished = bool(p.total and p.done >= p.total)
            log.info("%s: %d/%s done, %d ok, %d failed", self.desc, p.done, p.total or "?", p.ok, p.failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def progress_bar(desc: str, unit: str = "img") -> Iterator[ProgressBar]:
    """A progress hook for one stage; log lines go above the bar instead of through it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = ProgressBar(desc, unit)
    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.close()


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="wdr-pipe")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """wdr-pipe: from product-image URLs to a trained multi-label fashion tagger.

    \b
    A typical run:
      wdr-pipe fetch train.json validation.json --store store/
      wdr-pipe features --store store/
      wdr-pipe store info store/
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("wdr_pipe").setLevel(min(logging.INFO, max(level, logging.DEBUG)))
    # dask logs every worker start and stop at INFO: keep it quiet unless asked (-vv). distributed
    # sets its loggers' levels from its config when first imported, so say it there (workers inherit it).
    if verbose < 2:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


# -- fetch ---------------------------------------------------------------------


@cli.command()
@click.argument("indexes", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--store", "store", required=True, type=click.Path(file_okay=False), help="Store folder (created if missing).")
@click.option("--split", help="Split name (default: the index file's stem, e.g. train).")
@click.option("--label-map", type=click.Path(exists=True, dir_okay=False), help="CSV labelId,taskId,labelName,taskName.")
@click.option("--size", default=320, show_default=True, help="Output size in pixels (see --resize-mode).")
@click.option("--resize-mode", type=click.Choice(["shorter", "longer", "center_crop", "pad"]), default="shorter",
              show_default=True, help="shorter/longer: that side becomes --size; center_crop/pad: a --size square.")
@click.option("--quality", default=95, show_default=True, help="JPEG quality of the stored images.")
@click.option("--min-size", default=32, show_default=True, help="Reject images whose shorter side is smaller.")
@click.option("--shard-size", default=1000, show_default=True, help="Rows per shard (one dask task each).")
@click.option("--workers", type=int, help="Local worker processes [default: every core].")
@click.option("--threads", default=16, show_default=True, help="Download threads per worker.")
@click.option("--per-host", default=8, show_default=True, help="At most this many downloads at once per host in each worker (raise it to --threads for a one-host index).")
@click.option("--scheduler", help="Address of a running dask.distributed scheduler (tcp://HOST:PORT).")
@click.option("--timeout", default=10.0, show_default=True, help="Connect/read timeout per request, seconds.")
@click.option("--deadline", default=60.0, show_default=True, help="Overall time limit per image, retries included.")
@click.option("--retries", default=3, show_default=True, help="Retries on connection errors, 5xx and 429.")
@click.option("--max-bytes", default=20 * 2**20, show_default=True, help="Largest body accepted per image.")
@click.option("--limit", type=int, help="Fetch only the first N rows of each split.")
@click.option("--retry-failed", is_flag=True, help="Also fetch again the failed rows of finished shards.")
def fetch(indexes, store, split, label_map, size, resize_mode, quality, min_size, shard_size, workers, threads,
          per_host, scheduler, timeout, deadline, retries, max_bytes, limit, retry_failed):
    """Download and resize the images of URL INDEXES into Parquet shards under STORE/images/.

    INDEXES are FGVC5 JSON files (train.json ...), CSV/TSV/Parquet files with image_id and url
    columns, or a Clothing Attributes folder. A rerun resumes: finished shards are skipped.

    \b
    Examples:
      wdr-pipe fetch train.json validation.json --store store/
      wdr-pipe fetch urls.csv --store store/ --size 299 --limit 1000
      wdr-pipe fetch train.json --store store/ --retry-failed --scheduler tcp://10.0.0.5:8786
    """
    from .pipeline.download import DownloadConfig
    from .pipeline.fetch import FetchConfig, FetchOptions, fetch as run_fetch

    cfg = FetchConfig(size=size, resize_mode=resize_mode, quality=quality, min_size=min_size)
    dl = DownloadConfig(connect_timeout=timeout, read_timeout=timeout, deadline=deadline, retries=retries,
                        max_bytes=max_bytes)
    opts = FetchOptions(shard_size=shard_size, threads=threads, per_host=per_host, download=dl)
    with user_errors(), progress_bar("fetch") as bar:
        summary = run_fetch(store, indexes, cfg, opts, split=split, label_map=label_map, limit=limit,
                            retry_failed=retry_failed, workers=workers, scheduler=scheduler, progress=bar)
    for s in summary.splits:
        reasons = ", ".join(f"{k} {v}" for k, v in s.by_status.items()) or "none"
        click.echo(f"{s.split}: {s.ok} ok, {s.failed} failed ({reasons}); {s.shards_run} of {s.shards} shards "
                   f"run now, {s.bytes_downloaded / 2**20:.1f} MiB downloaded"
                   + (f", {s.duplicates} duplicate images (see images/{s.split}/_duplicates.parquet)" if s.duplicates else ""))
    click.echo(f"done in {summary.seconds:.1f}s; images in {store}/images/ (key {summary.key})")


# -- features ------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False), help="The store folder.")
@click.option("--split", "splits", multiple=True, help="Split to process (repeatable; default: every split with images).")
@click.option("--hog-size", type=int, default=128, show_default=True, help="Images are resized to SIZE x SIZE.")
@click.option("--orientations", type=int, default=9, show_default=True, help="HOG orientation bins.")
@click.option("--bins", type=int, default=8, show_default=True, help="Colour histogram bins per HSV channel.")
@click.option("--keep-background", is_flag=True, help="Count near-white background pixels in the histogram.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--rebuild", is_flag=True, help="Recompute every shard of these splits under this config.")
@click.option("--workers", type=int, default=None, help="Local worker processes (default: one per core).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="dask scheduler to run on (default: a local cluster; 'inline' runs in this process).")
def features(store_dir, splits, hog_size, orientations, bins, keep_background, dtype, rebuild, workers, scheduler):
    """Compute HOG and colour-histogram features of every fetched image.

    Writes STORE/features/KEY/SPLIT/part-NNNNN.parquet, one per image shard,
    where KEY is a hash of the settings; shards already computed with the same
    settings are reused, so a rerun only does new image shards.

    \b
    Example:
      wdr-pipe features --store store/ --split train --split validation
    """
    from .pipeline.features import FeatureConfig, compute_features

    with user_errors():
        cfg = FeatureConfig(hog_size=hog_size, orientations=orientations, bins=bins,
                            ignore_background=not keep_background, dtype=dtype)
        with progress_bar("features") as bar:
            summary = compute_features(store_dir, splits or None, cfg, rebuild=rebuild, workers=workers,
                                       scheduler=scheduler, progress=bar)
    click.echo(summary.line())


# -- store ---------------------------------------------------------------------


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


@cli.group("store")
def store_group() -> None:
    """Inspect a store (see docs/store.md for its layout)."""


@store_group.command("info")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def store_info_cmd(store, as_json):
    """Print the splits, row counts, failures, feature configs, label stats and sizes of STORE.

    \b
    Examples:
      wdr-pipe store info store/
      wdr-pipe store info store/ --json | jq .splits.train
    """
    import json

    from .cache.read import store_info

    with user_errors():
        info = store_info(store)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"store {info['path']}: schema version {info['schema_version']}, {_size(info['bytes'])}, "
               f"{info['labels']} labels ({'label_map.parquet' if info['label_map'] else 'no label map'})")
    click.echo(f"{'split':<12}{'index':>9}{'ok':>9}{'failed':>8}{'shards':>10}{'size':>12}")
    for name, s in info["splits"].items():
        index = "-" if s["index_rows"] is None else s["index_rows"]
        click.echo(f"{name:<12}{index:>9}{s['ok']:>9}{s['failed']:>8}"
                   f"{s['committed_shards']:>5}/{s['shards']:<4}{_size(s['bytes']):>12}")
        if s["failed_by_status"]:
            click.echo("    failed: " + ", ".join(f"{k} {v}" for k, v in s["failed_by_status"].items()))
    click.echo("features:" + ("" if info["features"] else " none (run 'wdr-pipe features')"))
    for f in info["features"]:
        shards = ", ".join(f"{k} {v}" for k, v in f["shards"].items()) or "no shards"
        click.echo(f"  {f['key']}  {f['summary']}\n      shards: {shards}; {_size(f['bytes'])}")
    click.echo("label stats:" + ("" if info["stats"] else " none (run 'wdr-pipe stats')"))
    for name, s in info["stats"].items():
        state = "complete" if s["complete"] else "INCOMPLETE (rerun 'wdr-pipe stats')"
        click.echo(f"  {name}: {state}, key {s['key']}, {_size(s['bytes'])}  {s['summary']}")


@cli.command("stats")
@click.option("--store", "store", required=True, type=click.Path(exists=True, file_okay=False), help="Store folder.")
@click.option("--split", "splits", multiple=True, help="Split(s) to do [default: every labelled split].")
@click.option("--dim", default=20, show_default=True, help="Label embedding dimension.")
@click.option("--alpha", default=0.75, show_default=True, help="Exponent of the label weights.")
@click.option("--epochs", default=1000, show_default=True, help="Epochs of the embedding fit.")
@click.option("--seed", default=0, show_default=True, help="Seed of the embedding fit.")
@click.option("--pos-weight-clip", default=100.0, show_default=True, help="Clip BCE pos_weight to [1/c, c].")
def stats_cmd(store, splits, dim, alpha, epochs, seed, pos_weight_clip):
    """Label counts, co-occurrence, label embeddings and loss weights of each labelled split.

    Writes STORE/stats/<split>/ (see docs/store.md); a rerun with the same settings and images does nothing.

    \b
    Examples:
      wdr-pipe stats --store store/
      wdr-pipe stats --store store/ --split train --dim 32 --alpha 0.5
    """
    from .pipeline.stats import StatsConfig, compute_stats

    with user_errors(), progress_bar("stats", unit="split") as bar:
        cfg = StatsConfig(dim=dim, alpha=alpha, epochs=epochs, seed=seed, pos_weight_clip=pos_weight_clip)
        summary = compute_stats(store, splits or None, cfg, progress=bar)
    for name, s in summary.items():
        if s["status"] == "computed":
            click.echo(f"{name}: {s['images']} images, {s['labels']} labels, embedding loss "
                       f"{s['loss_start']:.3f} -> {s['loss_end']:.4f}; written to {s['dir']}")
        elif s["status"] == "cached":
            click.echo(f"{name}: up to date ({s['dir']})")
        else:
            click.echo(f"{name}: skipped ({s['reason']})")


# -- synth / serve -------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--train", default=200, show_default=True, help="Images in the train split.")
@click.option("--validation", default=50, show_default=True, help="Images in the validation split.")
@click.option("--test", default=50, show_default=True, help="Images in the (unlabelled) test split.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same images.")
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True,
              help="Server the JSON URLs point at (see 'wdr-pipe serve').")
def synth(out: str, train: int, validation: int, test: int, seed: int, base_url: str) -> None:
    """Draw a synthetic fashion data set in the FGVC5 format.

    Writes OUT/images/<split>/<id>.jpg, OUT/label_map.csv and OUT/<split>.json
    whose URLs are BASE_URL/images/<split>/<id>.jpg. Existing images are kept.

    \b
    Example:
      wdr-pipe synth demo-data --train 200 --validation 50 --test 50
      wdr-pipe serve demo-data --port 8000 &
      wdr-pipe fetch demo-data/train.json demo-data/validation.json --store demo-store
    """
    from .pipeline import synth as synth_mod

    splits = {name: n for name, n in (("train", train), ("validation", validation), ("test", test)) if n > 0}
    if not splits:
        raise click.UsageError("nothing to draw; give --train, --validation or --test a positive count")
    records = synth_mod.make_dataset(out, splits, seed=seed)
    paths = synth_mod.write_fgvc5_json(out, records, base_url)
    click.echo(f"wrote {len(records)} images under {out}; indexes: {', '.join(str(p) for p in paths.values())}")


@cli.command(context_settings=CONTEXT)
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on (0: any free port).")
def serve(root: str, host: str, port: int) -> None:
    """Serve the files under ROOT over HTTP until Ctrl-C.

    Files are at /<relpath>; /fault/<kind>/<relpath> injects a fault (404,
    500-then-ok, 429, drip, truncated, html, oversized, bomb, redirect,
    redirect-loop, reset, slow-headers; see wdr_pipe/pipeline/serve.py).

    \b
    Example:
      wdr-pipe synth demo-data --train 100
      wdr-pipe serve demo-data --port 8000
      curl -I http://127.0.0.1:8000/images/train/1.jpg
    """
    from .pipeline.serve import serve_until_interrupted

    with user_errors():
        try:
            serve_until_interrupted(root, host, port, on_ready=lambda url: click.echo(
                f"serving {root} at {url} (Ctrl-C to stop)"))
        except OSError as e:
            raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port")


# -- demo ----------------------------------------------------------------------


@cli.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the generated data and the store.")
@click.option("--train", "n_train", default=240, show_default=True, help="Generated training images.")
@click.option("--validation", "n_validation", default=60, show_default=True, help="Generated validation images.")
@click.option("--test", "n_test", default=60, show_default=True, help="Generated test images.")
@click.option("--size", default=160, show_default=True, help="Stored image size (shorter side).")
@click.option("--workers", type=int, help="Local worker processes [default: every core].")
def demo(out, n_train, n_validation, n_test, size, workers):
    """Run the whole pipeline on generated garment photos served on 127.0.0.1.

    Draws an FGVC5-style data set (with a few broken URLs), serves it on loopback, then
    fetches, computes features and label statistics into OUT/store. A rerun reuses all
    finished work.

    \b
    Example:
      wdr-pipe demo --out demo-out && wdr-pipe store info demo-out/store
    """
    from .demo import run_demo

    from tqdm.contrib.logging import logging_redirect_tqdm

    bars = []

    def progress_for(stage):
        if bars:
            bars[-1].close()  # the previous stage is over
        bars.append(ProgressBar(stage, unit="split" if stage == "stats" else "img"))
        return bars[-1]

    try:
        with user_errors(), logging_redirect_tqdm():
            res = run_demo(out, n_train, n_validation, n_test, size=size, workers=workers, progress_for=progress_for)
    finally:
        for bar in bars:
            bar.close()
    for s in res.fetch.splits:
        reasons = ", ".join(f"{k} {v}" for k, v in s.by_status.items()) or "none"
        click.echo(f"fetch    {s.split}: {s.ok} ok, {s.failed} failed ({reasons})")
    click.echo(res.features.line())
    for split, st in res.stats.items():
        click.echo(f"stats    {split}: {st.get('status')}")
    click.echo(f"store ready: {res.store}  (next: wdr-pipe store info {res.store})")


def main() -> None:  # console script entry point
    cli(prog_name="wdr-pipe")


if __name__ == "__main__":
    main()
