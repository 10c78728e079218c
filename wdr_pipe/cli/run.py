"""``wdr-pipe run CONFIG.toml``: the whole DAG from one file (see ``wdr_pipe.workflow``)."""
from __future__ import annotations

import json

import click

from . import cli
from .common import CONTEXT, EXIT_UNEXPECTED, Failure, json_option, stage_bars, unexpected, user_errors


@cli.command("run", context_settings=CONTEXT)
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", "force", multiple=True, metavar="STEP",
              help="Redo STEP (features, stats, train or train.NAME) and every step that depends on it.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@json_option
def run_cmd(config, force, dry_run, as_json):
    """Run every stage a CONFIG.toml describes, in dependency order, reusing what is done.

    CONFIG holds the store, the fetch / features / stats settings and one [train.NAME]
    table per run (the flags of each command, dashes as underscores; see
    docs/reproduce.md for complete files). A finished stage is skipped by its own cache
    key; an interrupted run resumes where it stopped.

    Under torchrun (torchrun --nproc_per_node N -m wdr_pipe.cli run CONFIG.toml) every
    process trains each [train.NAME] run together (DDP); the other steps run on rank 0
    alone while the others wait, and rank 0 prints the tables. A step that fails on rank 0
    ends every process with its error.

    \b
    Examples:
      wdr-pipe run demo-out/demo.toml --dry-run
      wdr-pipe run demo-out/demo.toml
      wdr-pipe run demo-out/demo.toml --force train.wdr
    """
    from ..wdr.dist import Dist
    from ..wdr.score.compare import compare_runs, format_table
    from ..workflow import load_config, make_plan, outcome_lines, run_folders

    ranks = Dist()
    try:
        with user_errors():
            cfg = load_config(config)
            plan = make_plan(cfg)
            if dry_run:
                click.echo("\n".join(plan.lines()))
                return
            ranks.start(device=None)
            outcomes = _execute(plan, force, ranks)
    except click.ClickException as e:
        if not ranks.failed_together:
            raise
        e.show()  # every rank says why it ends before any exits: torchrun stops the rest when one does
        ranks.farewell()
        raise click.exceptions.Exit(e.exit_code) from None
    finally:
        ranks.stop()
    if not ranks.main:
        return
    if as_json:
        click.echo(json.dumps([{"step": o.step.name, "status": o.status, "seconds": round(o.seconds, 2),
                                "result": o.result.to_dict()} for o in outcomes], indent=2, default=str))
        return
    click.echo("\n".join(outcome_lines(outcomes)))
    folders = run_folders(cfg)
    if folders:
        with user_errors():
            click.echo("\n" + format_table(*compare_runs(folders, plan.evaluation_split)))


def _execute(plan, force, ranks):
    """The plan's steps with progress bars (rank 0's only); rank 0's failed step as its own line here."""
    from ..wdr.dist import StepFailed
    from ..workflow import execute

    try:
        with stage_bars(show=ranks.main) as progress_for:
            return execute(plan, force, progress_for, ranks)
    except StepFailed as e:  # raised on rank 0 by its step (a UserError arrives as one): the same line here
        if e.kind == "TaskFailed":
            raise Failure(e.message, EXIT_UNEXPECTED) from None
        raise unexpected(e.kind, e.message, "rank 0 wrote the traceback") from None
