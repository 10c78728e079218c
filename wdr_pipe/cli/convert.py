"""``convert-checkpoint``: an earlier wdr-pipe's pickled files of a run folder -> safetensors, on request."""
from __future__ import annotations

import click

from . import cli
from .common import CONTEXT, not_empty, user_errors


@cli.command("convert-checkpoint", context_settings=CONTEXT)
@click.argument("run", type=click.Path(file_okay=False), callback=not_empty)
def convert_checkpoint(run):
    """Convert RUN's checkpoints/*.pt (and an ensemble's stacker.npz) of an earlier wdr-pipe to safetensors.

    wdr-pipe never loads a pickle: unpickling a file can run any code in it. This command is
    the one exception, on request: each *.pt is read by torch's restricted unpickler
    (weights_only=True, numpy arrays allowed), which refuses other callables but still parses
    the pickle, so the conversion TRUSTS THE FILE: convert only runs you trust (your own, or
    a colleague's you would run). The new file is read back and checked to hold the same
    weights before the pickle is removed.

    \b
    Example:
      wdr-pipe convert-checkpoint runs/wdr
    """
    from ..wdr.runs.convert import convert_run

    with user_errors():
        done = convert_run(run)
    for old, new in done:
        click.echo(f"{old} -> {new.name}")
    click.echo(f"{run}: {len(done)} file(s) converted" if done else f"{run}: nothing to convert (no *.pt checkpoint "
                                                                      "or stacker.npz)")
