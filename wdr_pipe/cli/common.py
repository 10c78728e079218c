"""What every command shares: error rendering, exit codes, progress bars, result lines and options.

An error the library raises becomes one ``Error: ...`` line and the exit code of its kind
(``EXIT_CODES``, which docs/cli.md's table is generated from); progress from the library's one
hook is drawn as a tqdm bar on a terminal and logged every few seconds otherwise.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import click

from ..checks import Bound
from ..errors import BadSetting, TooManyFailed, UserError, first_line
from ..pipeline.runner import TaskFailed
from ..progress import Progress
from ..result import StageResult

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)
log = logging.getLogger("wdr_pipe")


@dataclass(frozen=True)
class ExitCode:
    code: int
    meaning: str
    todo: str


# Every command ends with one of these (docs/cli.md's table is generated from it: python -m wdr_pipe.cli.helpdoc).
EXIT_CODES = (
    ExitCode(0, "done. For `fetch` this includes images that could not be fetched: they are recorded with their "
                "reason, counted in the summary and in `wdr-pipe store info`, and `--retry-failed` tries them again",
             "nothing, or look at the failures"),
    ExitCode(1, "a problem you can fix: an input file (a store, a run folder, a `run` file; one that is damaged, or "
                "a pickle, which is never loaded), a value that does not fit them (a split the store lacks, a step "
                "the plan lacks), an output that would overwrite a store or a run folder, another process writing "
                "the same folder, the disk, an unreachable scheduler. The line names the file or option and the "
                "fix", "follow the line"),
    ExitCode(2, "a bad command line: an unknown option, a missing argument, or a value its option refuses on its "
                "own: out of range, not one of the choices, malformed (whether click or the command's settings "
                "find it). The line names the option, the value and what it accepts", "fix the command"),
    ExitCode(3, "`fetch --max-failed FRACTION`: more than that fraction of the fetched rows failed (the store is "
                "written and valid)", "look at the failures; pipelines stop here"),
    ExitCode(4, "an unexpected error: a bug, or a broken setup such as an unusable proxy setting. A shard task "
                "that raised it was not committed (finished shards are kept); the line names the task and a log "
                "file with the traceback (`STORE/_logs/<stage>-<time>-<pid>.log`, or `wdr-pipe-<time>-<pid>.log` "
                "in the temp folder when there is no store yet)", "report it with that file"),
    ExitCode(130, "interrupted (Ctrl-C). The run stops within a second or two; finished shards are kept",
             "run the same command again to resume"),
)
EXIT_DONE, EXIT_USER, EXIT_USAGE, EXIT_MAX_FAILED, EXIT_UNEXPECTED, EXIT_INTERRUPTED = (e.code for e in EXIT_CODES)
INTERRUPTED = "interrupted; finished shards are kept, run the same command again to resume"
UNEXPECTED = "(a bug or a broken setup; please report it with that file)"


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


def unexpected(kind: str, message: str, where: str) -> Failure:
    """The one line of an unexpected error: its kind, the first line of its message, where the traceback is."""
    return Failure(f"unexpected {kind}: {first_line(message)}; {where} {UNEXPECTED}", EXIT_UNEXPECTED)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Every failure as one line and the exit code of its kind: never a traceback on the terminal. An
    unexpected error in a command that read a store whose files do not read is that file, named, with its fix."""
    from ..cache.doctor import damaged_file
    from ..cache.store import watching

    try:
        with watching() as stores:
            yield
    except BadSetting as e:
        raise Failure(str(e), EXIT_USAGE) from e
    except TooManyFailed as e:
        raise Failure(str(e), EXIT_MAX_FAILED) from e
    except UserError as e:
        raise Failure(str(e), EXIT_USER) from e
    except TaskFailed as e:
        raise Failure(str(e), EXIT_UNEXPECTED) from e
    except KeyboardInterrupt:
        raise Failure(INTERRUPTED, EXIT_INTERRUPTED) from None
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as e:  # a damaged store, else a bug or a broken setup: one line, the traceback in a file
        damage = damaged_file(stores)
        if damage:
            raise Failure(damage, EXIT_USER) from e
        raise unexpected(type(e).__name__, str(e), _crash_log(e)) from e


@contextlib.contextmanager
def settings_errors() -> Iterator[None]:
    """Around making a command's settings or config from its command line: whatever they refuse is a
    bad command line (exit 2), as when click refuses a value, whichever check finds it."""
    try:
        yield
    except UserError as e:
        raise Failure(str(e), EXIT_USAGE) from e


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


@contextlib.contextmanager
def stage_bars(show: bool = True) -> Iterator[Callable[[str], Optional[ProgressBar]]]:
    """``progress_for(stage)`` for a run of several stages: each stage gets a new bar and closes the
    previous one (``show=False``: no bars, as on the ranks of a ``run`` other than 0)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    bars = []

    def progress_for(stage: str) -> Optional[ProgressBar]:
        if not show:
            return None
        if bars:
            bars[-1].close()  # the previous stage is over
        bars.append(ProgressBar(stage, unit="step" if stage.startswith("train") else "img"))
        return bars[-1]

    try:
        with logging_redirect_tqdm():
            yield progress_for
    finally:
        for bar in bars:
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


def store_option(create: bool = False, required: bool = True, exists: bool = True, help: str = "Store folder."):
    """``--store DIR``, the one spelling of every command's store: ``create``: made if missing (fetch);
    ``exists``: refused by click when missing (else the library names the folder and the fix)."""
    return click.option("--store", "store", required=required, callback=not_empty,
                        type=click.Path(file_okay=False, exists=exists and not create),
                        help="Store folder (created if missing)." if create else help)


def _check_device(ctx, param, value):
    from ..wdr.checks import check_device

    if value is not None:
        try:
            check_device(value)
        except UserError as e:
            raise click.BadParameter(f"{value!r}: {str(e).split(': ', 1)[-1]}", ctx, param) from None
    return value


def device_option(default: Optional[str] = "auto", help: str = "auto (CUDA when there is one), cpu, cuda or cuda:N."):
    """``--device``, the one spelling of every command's device (checked as the configs check it)."""
    return click.option("--device", default=default, show_default=default is not None, callback=_check_device,
                        help=help)


def given_options(names) -> dict:
    """The options of ``names`` that the command line gave (not their defaults), by parameter name."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = {n: ctx.params[n] for n in names
             if n in ctx.params and ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)}
    if ctx.params.get("workers") is not None:  # --loader-workers' earlier name
        given["loader_workers"] = ctx.params["workers"]
    return given


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")(f)
