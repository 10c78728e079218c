"""``browse``: the local web page over a store (and a run): search by photo or by tags."""
from __future__ import annotations

import os
import sys

import click

from ..wdr.checks import BATCH_SIZE
from . import cli
from .common import CONTEXT, bounded, device_option, not_empty, progress_bar, store_option, user_errors
from .model import loader_workers_option

NETWORK = ("reachable from the network: anyone who can reach this machine on port {port} can see the store's "
           "images and labels")


@cli.command(context_settings=CONTEXT)
@store_option()
@click.option("--run", "run", type=click.Path(file_okay=False), default=None, callback=not_empty,
              help="A run folder of 'wdr-pipe train' or 'ensemble': predicted tags, tag search, Grad-CAM "
                   "[default: none, photo search only].")
@click.option("--embeddings", "key", default=None,
              help="Embedding key for photo search [default: the run's backbone's, else the store's only one].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; another than loopback makes the page reachable from the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free one).")
@click.option("--allow-urls", is_flag=True, help="Let the page fetch a photo from an http(s) URL it is given.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default=None,
              help="Which checkpoint of a training run [default: best].")
@click.option("--tta", type=click.Choice(["none", "flip"]), default=None,
              help="Test-time augmentation of the run's probabilities (stored images and photos) [default: none].")
@device_option()
@click.option("--batch-size", type=bounded(BATCH_SIZE), default=64, show_default=True,
              help="Images per batch when the run first scores the store.")
@loader_workers_option(2, "Loader worker processes when the run first scores the store.")
def browse(store, run, key, host, port, allow_urls, checkpoint, tta, device, batch_size, loader_workers):
    """A local web page to search the store by photo or by tags, and see what the run says.

    Search by photo (upload, drag and drop, paste): the photo's predicted tags and the most
    similar stored images. Search by tags: stored images ranked by the run's probability for the
    labels (or matched on their true labels). One image: true against predicted labels, similar
    images, Grad-CAM. The first start with a run scores every stored image once and keeps the
    probabilities in RUN/browse/; later starts compute nothing. The page and its JSON API
    (docs/browse.md) are read-only and bound to 127.0.0.1 unless --host says otherwise.

    \b
    Examples:
      wdr-pipe browse --store store/ --run runs/wdr
      wdr-pipe browse --store store/ --embeddings 4dad0432899d --port 8080
      wdr-pipe browse --store store/ --run runs/wdr --host 0.0.0.0 --allow-urls
    """
    from ..browse import address, bind, create_app, is_loopback, open_answers, passive_openmp, serve

    passive_openmp()
    with user_errors():
        sock = bind(host, port)  # first: a port in use is said before any work
        try:
            with progress_bar("browse") as bar:
                answers = open_answers(store, run, key, checkpoint=checkpoint, tta=tta, device=device,
                                       batch_size=batch_size, workers=loader_workers,
                                       progress_for=lambda stage: bar)
        except BaseException:
            sock.close()
            raise
        network = not is_loopback(sock)
        url = address(sock)
        app = create_app(answers, allow_urls=allow_urls, network=network, address=url, loopback_only=not network)
    for note in answers.notes:
        click.echo(f"note: {note}", err=True)
    c = answers.catalog
    what = f"{len(c)} images" + (f", tags of run {answers.run['name']}" if answers.has_model else ", no run: photo search")
    click.echo(f"wdr-pipe browse: {url}  ({what}; ready in {answers.seconds['total']:.1f} s; Ctrl-C stops it)")
    sys.stdout.flush()  # the address, at once, also to a pipe or a log file
    if network:
        click.echo("warning: " + NETWORK.format(port=sock.getsockname()[1]), err=True)
    serve(app, sock)
    click.echo("wdr-pipe browse: stopped", err=True)
    if answers.loading is not None and not answers.loading.done.is_set():
        # the model is still loading in its thread (importing torch): nothing is written there, and an
        # interpreter shutting down under an import aborts, so leave at once
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
