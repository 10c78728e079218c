"""The ``wdr-pipe`` command: a thin click layer over the library.

``common.py`` holds what every command shares (errors and exit codes, progress, shared options),
``options.py`` makes a command's options from its settings class; ``data.py`` has the data
commands, ``model.py`` training, ``evaluate.py`` scoring, ``embed.py`` embeddings and search,
``run.py`` the workflow, ``convert.py`` an earlier version's checkpoints, ``dev.py`` the generated
data, server and demo, ``helpdoc.py`` the generated parts of docs/cli.md. Each command parses,
calls the library and prints its result's lines.
"""
from __future__ import annotations

import logging
import os
import warnings

import click

from .. import __version__
from .common import CONTEXT


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
    # dask's own messages (worker starts and stops, workers lost on Ctrl-C, port warnings) stay off the
    # terminal unless asked: errors only by default, warnings with -v, everything with -vv. distributed
    # sets its loggers' levels from its config when first imported, so say it there (workers inherit it).
    dask_level = logging.DEBUG if verbose >= 2 else logging.WARNING if verbose == 1 else logging.ERROR
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(dask_level).lower())
    logging.getLogger("distributed").setLevel(dask_level)
    if verbose < 1:
        warnings.filterwarnings("ignore", module=r"distributed(\.|$)")


def main() -> None:  # console script entry point
    cli(prog_name="wdr-pipe")


from . import browse, convert, data, dev, embed, evaluate, model, run  # noqa: E402,F401  (register the commands)

__all__ = ["cli", "main"]
