"""Every option of the data commands, given a boundary value, works or fails fast with one line.

The walk (tests/cli/optionwalk.py) runs the real ``wdr-pipe`` command line over real stores in a
bounded subprocess:
for every option and argument of ``fetch``, ``features``, ``stats`` and ``store info`` it
tries 0, -1, a huge number, an empty string and nan. Each run must end within a bound,
exit 0 (it worked) or 1/2 (refused) with exactly one ``Error:`` line, and never show a
traceback. The library configs refuse the same values, naming option, value and range.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers import REPO, csv_store, subprocess_env
from optionwalk import VALUES, error_line, problems, range_tables, walk
from wdr_pipe.checks import bounds
from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.configs import DownloadConfig, FeatureConfig, FetchConfig, FetchOptions, StatsConfig
from wdr_pipe.pipeline.fetch import fetch
from wdr_pipe.pipeline.runner import run_tasks, scheduler_problem

CASE_SECONDS = 60   # a refusal takes well under a second; a run that works, a few
WALK_SECONDS = 540  # the whole walk, in one subprocess


@pytest.fixture(scope="module")
def walk_inputs(synth_data, tmp_path_factory):
    """(index CSV, a store with images of it) for the walk."""
    data_root, records = synth_data
    train = [r for r in records if r.split == "train"][:4]
    store, index = csv_store(tmp_path_factory.mktemp("walk"), data_root, train, size=64, shard_size=2,
                             name="template")
    return index, store


@pytest.mark.slow
def test_every_option_with_boundary_values_works_or_fails_fast_in_one_line(walk_inputs, tmp_path):
    index, store = walk_inputs
    bases = {
        "fetch": ["fetch", str(index), "--store", "{new}", "--scheduler", "inline", "--timeout", "5"],
        "features": ["features", "--store", "{copy}", "--scheduler", "inline"],
        "stats": ["stats", "--store", "{copy}", "--epochs", "10"],
        "store info": ["store", "info", "{copy}"],
    }
    results = walk({"bases": bases, "templates": {"{copy}": str(store)}, "values": VALUES,
                    "seconds": CASE_SECONDS}, tmp_path, WALK_SECONDS)
    walked = {(r["command"], r["option"]) for r in results}
    assert {("fetch", "timeout"), ("fetch", "workers"), ("fetch", "scheduler"), ("fetch", "max_failed"),
            ("features", "hog_size"), ("stats", "seed"), ("store info", "store")} <= walked
    assert len(results) >= 5 * 30
    found = problems(results)
    assert not found, "\n".join(found)
    # a refused value is named with its option, on the one line
    by = {(r["command"], r["option"], r["value"]): r for r in results}
    for key, words in {("fetch", "timeout", "0"): ["'--timeout'", "0", "0<x<=3600"],
                       ("fetch", "workers", "-1"): ["'--workers'", "-1"],
                       ("fetch", "per_host", "0"): ["'--per-host'", "0", "1<=x<=1024"],
                       ("fetch", "scheduler", "0"): ["'--scheduler'", "'0'", "tcp://HOST:8786"],
                       ("fetch", "max_failed", "nan"): ["'--max-failed'", "nan"],
                       ("stats", "seed", "-1"): ["'--seed'", "-1"],
                       ("features", "hog_size", "9" * 24): ["'--hog-size'", "16<=x<=512"]}.items():
        line = error_line(by[key])
        assert by[key]["code"] == 2 and all(w in line for w in words), (key, line)


@pytest.mark.parametrize("args, words", [
    (["fetch", "{index}", "--store", "{store}", "--workers", "-3"], ["'--workers'", "-3"]),
    (["fetch", "{index}", "--store", "{store}", "--per-host", "0"], ["'--per-host'", "0"]),
    (["fetch", "{index}", "--store", "{store}", "--timeout", "0"], ["'--timeout'", "0"]),
    (["fetch", "{index}", "--store", "{store}", "--deadline", "0"], ["'--deadline'", "0"]),
    (["fetch", "{index}", "--store", "{store}", "--max-bytes", "0"], ["'--max-bytes'", "0"]),
    (["fetch", "{index}", "--store", "{store}", "--limit", "-1"], ["'--limit'", "-1"]),
    (["fetch", "{index}", "--store", "{store}", "--retries", "-1"], ["'--retries'", "-1"]),
    (["fetch", "{index}", "--store", "{store}", "--scheduler", "nonsense"], ["'--scheduler'", "'nonsense'"]),
    (["features", "--store", "{template}", "--workers", "-1", "--rebuild"], ["'--workers'", "-1"]),
    (["features", "--store", "{template}", "--scheduler", "ftp://host:21"], ["'--scheduler'", "unknown protocol"]),
])
def test_the_values_of_the_issue_fail_at_once_in_one_line(walk_inputs, tmp_path, args, words):
    index, store = walk_inputs
    args = [a.format(index=index, store=tmp_path / "s", template=store) for a in args]
    proc = subprocess.run([sys.executable, "-m", "wdr_pipe.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=subprocess_env())
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in errors[0] for w in words), errors[0]
    assert not (tmp_path / "s").exists()  # refused before anything was written


# -- the library refuses the same values --------------------------------------------

CONFIGS = {c.__name__: c for c in (FetchConfig, DownloadConfig, FetchOptions, FeatureConfig, StatsConfig)}


@pytest.mark.parametrize("table", sorted(CONFIGS))
def test_every_config_refuses_each_end_of_its_ranges_by_option_value_and_range(table):
    cls = CONFIGS[table]
    for field, bound in bounds(cls).items():
        step = 1 if bound.integer else 1e-3
        outside = [bound.hi + step, float("nan"), "3", None, True]
        outside.append(bound.lo if bound.lo_open else bound.lo - step)
        for value in outside:
            with pytest.raises(UserError) as e:
                cls(**{field: value})
            assert f"{field} {value!r}" in str(e.value) and bound.option in str(e.value), str(e.value)
            assert bound.text() in str(e.value), str(e.value)
            assert "\n" not in str(e.value)
        for value in [bound.hi, bound.lo + step if bound.lo_open else bound.lo]:
            cls(**{field: value})  # both ends are accepted


def test_library_checks_workers_and_scheduler_before_any_work(tmp_path):
    with pytest.raises(UserError, match=r"--workers -3: use 1 to \d+"):
        run_tasks(lambda t, p: t, [1], stage="x", workers=-3)
    with pytest.raises(UserError, match=r"--workers 0"):
        fetch(tmp_path / "s", ["nothing.json"], workers=0)
    for bad in ["nonsense", "", "tcp://host", "ftp://h:1", "tcp://h:0", "h:99999", "tcp://a b:1"]:
        with pytest.raises(UserError, match="--scheduler"):
            run_tasks(lambda t, p: t, [1], stage="x", scheduler=bad)
    assert not (tmp_path / "s").exists()
    for good in [None, "inline", "tcp://10.0.0.5:8786", "127.0.0.1:8786", "tls://[::1]:8786", "ws://host-1:80"]:
        assert scheduler_problem(good) is None, good


def documented_ranges():
    """``{(command, option): accepted}`` of docs/cli.md's table of ranges (a blank command cell: the row
    above's; a cell may name several commands)."""
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    rows, commands = {}, []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if not line.startswith("|") or len(cells) < 5 or not cells[2].startswith("`-"):
            continue
        commands = re.findall(r"`([^`]+)`", cells[1]) if cells[1] else commands
        for command in commands:
            rows[(command, cells[2].strip("`"))] = cells[3]
    return text, rows


def test_docs_cli_lists_every_range_as_the_code_has_it():
    text, rows = documented_ranges()
    for command, tables in range_tables().items():
        for table in tables:
            for bound in table.values():
                if bound.option.startswith("-"):  # not the library-only settings
                    assert rows.get((command, bound.option), "").startswith(bound.text()), \
                        (command, bound.option, bound.text())
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 130 |"):
        assert code in text
