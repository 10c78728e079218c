"""``wdr-pipe run CONFIG.toml``: the whole DAG from one file (see ``wdr_pipe.workflow``)."""
from __future__ import annotations

import json

import click

from . import cli
from .common import CONTEXT, ProgressBar, json_option, user_errors


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

    \b
    Examples:
      wdr-pipe run demo-out/demo.toml --dry-run
      wdr-pipe run demo-out/demo.toml
      wdr-pipe run demo-out/demo.toml --force train.wdr
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..wdr.compare import compare_runs, format_table
    from ..workflow import execute, load_config, make_plan, run_folders

    with user_errors():
        cfg = load_config(config)
        plan = make_plan(cfg)
        if dry_run:
            for step in plan.steps:
                deps = f"  (after {', '.join(step.deps)})" if step.deps else ""
                click.echo(f"{step.name:<22} {step.what}{deps}")
            return
        bars = []

        def progress_for(name):
            if bars:
                bars[-1].close()
            bars.append(ProgressBar(name, unit="step" if name.startswith("train") else "img"))
            return bars[-1]

        try:
            with logging_redirect_tqdm():
                outcomes = execute(plan, force, progress_for)
        finally:
            for bar in bars:
                bar.close()
    if as_json:
        click.echo(json.dumps([{"step": o.step.name, "status": o.status, "seconds": round(o.seconds, 2),
                                "result": o.result.to_dict()} for o in outcomes], indent=2, default=str))
        return
    click.echo(f"{'step':<22}{'status':<8}{'seconds':>9}  result")
    for o in outcomes:
        click.echo(f"{o.step.name:<22}{o.status + ('*' if o.forced else ''):<8}{o.seconds:>9.1f}  {o.result.line()}")
    folders = run_folders(cfg)
    if folders:
        with user_errors():
            click.echo("\n" + format_table(*compare_runs(folders, (cfg.evaluate or {}).get("split", "validation"))))
