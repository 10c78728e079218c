"""Development commands: ``synth`` (generated data), ``serve`` (loopback server) and ``demo``."""
from __future__ import annotations

import click

from ..demo.demo import DemoSettings
from ..pipeline.runner import Cluster
from . import cli
from .common import CONTEXT, not_empty, settings_errors, stage_bars, user_errors
from .options import from_options, options

URL_SCHEMES = ("http://", "https://", "file://")


def _base_url(ctx, param, value):
    if not str(value).lower().startswith(URL_SCHEMES):
        raise click.BadParameter(f"{value!r}: give the URL the images will be served at, starting with "
                                 f"{', '.join(URL_SCHEMES)} (e.g. http://127.0.0.1:8000)", ctx, param)
    return value


# -- synth / serve -------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(file_okay=False), callback=not_empty)
@click.option("--train", type=click.IntRange(0, 1_000_000), default=200, show_default=True, help="Images in the train split.")
@click.option("--validation", type=click.IntRange(0, 1_000_000), default=50, show_default=True, help="Images in the validation split.")
@click.option("--test", type=click.IntRange(0, 1_000_000), default=50, show_default=True, help="Images in the (unlabelled) test split.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True, help="Same seed, same images.")
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True, callback=_base_url,
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
    from ..demo import synth as synth_mod

    splits = {name: n for name, n in (("train", train), ("validation", validation), ("test", test)) if n > 0}
    if not splits:
        raise click.UsageError("nothing to draw; give --train, --validation or --test a positive count")
    records = synth_mod.make_dataset(out, splits, seed=seed)
    paths = synth_mod.write_fgvc5_json(out, records, base_url)
    click.echo(f"wrote {len(records)} images under {out}; indexes: {', '.join(str(p) for p in paths.values())}")


@cli.command(context_settings=CONTEXT)
@click.argument("root", type=click.Path(file_okay=False), callback=not_empty)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on (0: any free port).")
def serve(root: str, host: str, port: int) -> None:
    """Serve the files under ROOT over HTTP until Ctrl-C.

    Files are at /<relpath>; /fault/<kind>/<relpath> injects a fault (404,
    500-then-ok, 429, drip, truncated, html, oversized, bomb, redirect,
    redirect-loop, reset, slow-headers; see wdr_pipe/demo/serve.py).

    \b
    Example:
      wdr-pipe synth demo-data --train 100
      wdr-pipe serve demo-data --port 8000
      curl -I http://127.0.0.1:8000/images/train/1.jpg
    """
    from ..demo.serve import serve_until_interrupted

    with user_errors():
        try:
            serve_until_interrupted(root, host, port, on_ready=lambda url: click.echo(
                f"serving {root} at {url} (Ctrl-C to stop)"))
        except OSError as e:
            raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror}); check --host, or pick "
                                       "another --port")


# -- demo ----------------------------------------------------------------------


@cli.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False), callback=not_empty,
              help="Folder for the generated data, the store, the runs and demo.toml.")
@options(DemoSettings)
@options(Cluster, only=("workers",))
def demo(out, workers, **given):
    """Run the whole pipeline on generated garment photos served on 127.0.0.1.

    Draws an FGVC5-style data set (with a few broken URLs), serves it on loopback, writes
    OUT/demo.toml and runs it: fetch, features, label statistics, then the WDR paper's
    ablation (Deep fixed / half / tuned, Deep + Wide + Recurrent, with the poster's
    weighting) with ImageNet transfer learning, and prints the table. A rerun reuses all
    finished work; edit OUT/demo.toml and use 'wdr-pipe run' on it.

    \b
    Example:
      wdr-pipe demo --out demo-out && wdr-pipe run demo-out/demo.toml
    """
    from ..demo.demo import run_demo

    with user_errors():
        with settings_errors():
            settings = from_options(DemoSettings, given)
        with stage_bars() as progress_for:
            res = run_demo(out, settings, workers=workers, progress_for=progress_for)
    click.echo("\n".join(res.lines()))
