"""What every command shares: error rendering, exit codes, progress bars, result lines and options.

A ``UserError`` raised by the library becomes a one-line ``click.ClickException``;
progress from the library's one hook is drawn as a tqdm bar on a terminal and
logged every few seconds otherwise. Exit codes (docs/cli.md): 0 done, 1 a problem the
user can fix, 2 a bad command line, 3 ``fetch --max-failed`` exceeded, 4 an unexpected
error (its traceback goes to a log file whose path is printed), 130 Ctrl-C.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Iterator

import click

from ..errors import UserError
from ..checks import Bound
from ..pipeline.runner import TaskFailed, max_workers, scheduler_problem
from ..progress import Progress
from ..result import StageResult

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)
log = logging.getLogger("wdr_pipe")

EXIT_USER, EXIT_USAGE, EXIT_MAX_FAILED, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
INTERRUPTED = "interrupted; finished shards are kept, run the same command again to resume"


class Failure(click.ClickException):
    """A one-line ``Error: ...`` with an exit code of its own."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _crash_log(e: BaseException) -> str:
    """Write the traceback of an unexpected exception to a file in the temp folder; returns where it is."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / f"wdr-pipe-{stamp}-{os.getpid()}.log"
    try:
        path.write_text(f"wdr-pipe {' '.join(sys.argv[1:])}\n\n"
                        + "".join(traceback.format_exception(type(e), e, e.__traceback__)), encoding="utf-8")
        return f"the traceback is in {path}"
    except OSError as err:
        return f"could not write the traceback to {path} ({err.strerror})"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Every failure as one line and its exit code: never a traceback on the terminal."""
    try:
        yield
    except UserError as e:
        raise Failure(str(e), EXIT_USER) from e
    except TaskFailed as e:
        raise Failure(str(e), EXIT_UNEXPECTED) from e
    except KeyboardInterrupt:
        raise Failure(INTERRUPTED, EXIT_INTERRUPTED) from None
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as e:  # a bug or a broken setup: one line here, the traceback in a file
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise Failure(f"unexpected {type(e).__name__}: {first}; {_crash_log(e)} (a bug or a broken setup; "
                      "please report it with that file)", EXIT_UNEXPECTED) from e


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
    """Print a stage's result: its summary lines and its one line, or the whole result as JSON."""
    click.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else "\n".join(result.lines()))


# -- shared options ---------------------------------------------------------------
class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and inf (which compare false with every bound)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number in the range {self._describe_range()}.", param, ctx)
        return rv


def bounded(bound: Bound) -> click.ParamType:
    """The click type of a library ``Bound``: the CLI refuses exactly what the config refuses."""
    if bound.integer:
        return click.IntRange(bound.lo, bound.hi, min_open=bound.lo_open, max_open=bound.hi_open)
    return FiniteFloatRange(bound.lo, bound.hi, min_open=bound.lo_open, max_open=bound.hi_open)


def not_empty(ctx, param, value):
    """Refuse an empty path (it would silently mean the current folder, or the option's default)."""
    if value is not None and not str(value).strip():
        if isinstance(param.type, click.Path) and not param.type.dir_okay:
            raise click.BadParameter("an empty path; give a file name.", ctx, param)
        raise click.BadParameter("an empty path; give a folder (use . for the current one).", ctx, param)
    return value


def store_option(create: bool = False):
    """``--store DIR``: the store folder (``create``: made if missing, as fetch does)."""
    return click.option("--store", "store", required=True, callback=not_empty,
                        type=click.Path(file_okay=False, exists=not create),
                        help="Store folder" + (" (created if missing)." if create else "."))


def _check_workers(ctx, param, value):
    if value is not None and value > max_workers():
        raise click.BadParameter(f"{value} is more than {max_workers()} (4 per core of this machine)")
    return value


def workers_option(f):
    return click.option("--workers", type=click.IntRange(min=1), default=None, callback=_check_workers,
                        help="Local worker processes, at most 4 per core [default: one per core].")(f)


def _check_scheduler(ctx, param, value):
    problem = scheduler_problem(value)
    if problem:
        raise click.BadParameter(f"{value!r}: {problem}.", ctx, param)
    return value


def scheduler_option(f):
    return click.option("--scheduler", default=None, metavar="ADDRESS", callback=_check_scheduler,
                        help="dask.distributed scheduler to run on (tcp://HOST:8786); default: a local cluster "
                             "of --workers processes; 'inline': in this process, one shard after another.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")(f)
