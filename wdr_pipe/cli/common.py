"""What every command shares: error rendering, progress bars, result lines and option decorators.

A ``UserError`` raised by the library becomes a one-line ``click.ClickException``;
progress from the library's one hook is drawn as a tqdm bar on a terminal and
logged every few seconds otherwise.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Iterator

import click

from ..errors import UserError
from ..progress import Progress
from ..result import StageResult

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
        if self.tty:
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=p.total, desc=self.desc, unit=self.unit, dynamic_ncols=True)
            if p.total is not None and self.bar.total != p.total:
                self.bar.total = p.total
            self.bar.n = p.done
            if p.message:
                self.bar.set_postfix_str(p.message, refresh=False)
            else:
                self.bar.set_postfix(ok=p.ok, failed=p.failed, refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self.last_log > 5 or (p.total and p.done >= p.total and not self.finished):
            self.last_log = time.monotonic()
            self.finished = bool(p.total and p.done >= p.total)
            log.info("%s: %d/%s done, %d ok, %d failed%s", self.desc, p.done, p.total or "?", p.ok, p.failed,
                     f" ({p.message})" if p.message else "")

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


def echo_result(result: StageResult, as_json: bool = False) -> None:
    """Print a stage's result: its one line, or the whole result as JSON."""
    click.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else result.line())


# -- shared options ---------------------------------------------------------------
def store_option(create: bool = False):
    """``--store DIR``: the store folder (``create``: made if missing, as fetch does)."""
    return click.option("--store", "store", required=True,
                        type=click.Path(file_okay=False, exists=not create),
                        help="Store folder" + (" (created if missing)." if create else "."))


def workers_option(f):
    return click.option("--workers", type=click.IntRange(min=1), default=None,
                        help="Local worker processes [default: one per core].")(f)


def scheduler_option(f):
    return click.option("--scheduler", default=None, metavar="ADDRESS",
                        help="dask.distributed scheduler to run on (tcp://HOST:8786); default: a local cluster "
                             "of --workers processes; 'inline': in this process, one shard after another.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")(f)
