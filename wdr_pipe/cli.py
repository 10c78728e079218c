"""The ``wdr-pipe`` command: parses flags and delegates to the library.

Every command has help text with an example. A ``UserError`` raised by the
library becomes a one-line ``click.ClickException``; progress from the
library's hook is drawn as a bar on a terminal and logged otherwise.
"""
from __future__ import annotations

import contextlib
import logging
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
        elif time.monotonic() - self.last_log > 5 or (p.total and p.done >= p.total):
            self.last_log = time.monotonic()
            log.info("%s: %d/%s done, %d ok, %d failed", self.desc, p.done, p.total or "?", p.ok, p.failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def progress_bar(desc: str) -> Iterator[ProgressBar]:
    bar = ProgressBar(desc)
    try:
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


# -- fetch ---------------------------------------------------------------------

# -- features ------------------------------------------------------------------

# -- store ---------------------------------------------------------------------

# -- synth / serve -------------------------------------------------------------


def main() -> None:  # console script entry point
    cli(prog_name="wdr-pipe")


if __name__ == "__main__":
    main()
