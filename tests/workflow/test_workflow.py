"""``wdr-pipe run CONFIG.toml``: the DAG from one file, reuse, --force, --dry-run and bad files."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import subprocess_env
from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.workflow import execute, load_config, make_plan

TINY = 'epochs = 1\nbatch_size = 8\nimage_size = 64\nworkers = 0\nthresholds = "none"\n'


def write(tmp_path: Path, store: Path, extra: str = "") -> Path:
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'store = "{store}"\nruns = "runs"\n\n[features]\nhog_size = 64\n\n[stats]\nepochs = 50\n\n'
                   f'[train.fixed]\npretrained = true\ndeep = "fixed"\n{TINY}\n'
                   f'[train.wdr]\ninit = "fixed"\nparts = "deep,wide,recurrent"\n{TINY}{extra}')
    return cfg


def test_run_trains_in_order_then_reuses_everything_and_force_redoes_dependants(copy_store, tmp_path):
    cfg = write(tmp_path, copy_store)
    plan = make_plan(load_config(cfg))
    assert plan.names() == ["features", "stats", "train.fixed", "train.wdr"]
    assert plan.dependants(["train.fixed"]) == ["train.fixed", "train.wdr"]
    first = {o.step.name: o.status for o in execute(plan)}
    # the store's features and stats were already there (built by the real stages); the runs are new
    assert first == {"features": "reused", "stats": "ran", "train.fixed": "ran", "train.wdr": "ran"}
    again = {o.step.name: o.status for o in execute(make_plan(load_config(cfg)))}
    assert set(again.values()) == {"reused"}
    forced = execute(make_plan(load_config(cfg)), force=["train.fixed"])
    assert {o.step.name: (o.status, o.forced) for o in forced}["train.wdr"] == ("ran", True)
    assert {o.step.name: o.status for o in forced}["stats"] == "reused"
    kept = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert kept[:2] == ["fixed", "fixed.before-" + kept[1].split("before-")[1]] and "wdr" in kept  # nothing deleted


def test_cli_dry_run_and_result_table(copy_store, tmp_path):
    cfg = write(tmp_path, copy_store)
    res = CliRunner().invoke(cli, ["run", str(cfg), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "train.wdr" in res.output and "(after features, stats, train.fixed)" in res.output
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    res = CliRunner().invoke(cli, ["run", str(cfg), "--force", "nope"])
    assert res.exit_code == 1 and "--force nope: no such step" in res.output


@pytest.mark.parametrize("extra, message", [
    ("bogus = 1\n", r"run.toml:\d+: unknown key \[train.wdr\] 'bogus'"),
    ('[fetch]\nsize = 64\n', r"\[fetch\] needs indexes"),
    ('lr = -1\n', r"\[train.wdr\]: train config: lr -1 \(--lr\): use more than 0 up to 10"),
    ('[ensemble.e]\nruns = ["fixed", "nope"]\n', r"\[ensemble.e\] runs = .*\(nope is none\)"),
    ('[predict]\nrun = "nope"\nout = "s.csv"\n', r"\[predict\] run = 'nope': name a \[train.NAME\] or \[ensemble.NAME\]"),
])
def test_bad_files_are_one_line_naming_the_place(copy_store, tmp_path, extra, message):
    cfg = write(tmp_path, copy_store, extra)
    with pytest.raises(UserError, match=message):
        make_plan(load_config(cfg))


def test_init_cycle_is_named(tmp_path, copy_store):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'store = "{copy_store}"\n[train.a]\ninit = "b"\n[train.b]\ninit = "a"\n')
    with pytest.raises(UserError, match="init makes a cycle: a -> b -> a"):
        load_config(cfg)



@pytest.mark.slow
def test_a_killed_run_resumes_reusing_the_finished_steps_and_the_training_checkpoint(copy_store, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from wdr_pipe.wdr.runs.checkpoint import load_checkpoint
    from wdr_pipe.wdr.runs.folder import RunFolder

    cfg = tmp_path / "run.toml"
    cfg.write_text(f'store = "{copy_store}"\nruns = "runs"\nscheduler = "inline"\n\n[stats]\nepochs = 50\n\n'
                   '[train.tune]\npretrained = true\nepochs = 2\nbatch_size = 8\nimage_size = 64\nworkers = 0\n'
                   'checkpoint_every = 2\nthresholds = "none"\n')
    env = subprocess_env()
    cmd = [sys.executable, "-m", "wdr_pipe.cli", "run", str(cfg), "--json"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    last = RunFolder(tmp_path / "runs" / "tune").last
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-training: stats done, the run's first checkpoint written
    _, err = proc.communicate()
    assert last.exists(), err.decode()[-2000:]
    at = load_checkpoint(last)["step"]
    assert 0 < at < 12 and not RunFolder(tmp_path / "runs" / "tune").result.exists(), at  # 6 steps an epoch
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    steps = {s["step"]: s for s in json.loads(again.stdout)}
    assert {name: s["status"] for name, s in steps.items()} == {"stats": "reused", "train.tune": "ran"}
    tune = steps["train.tune"]["result"]
    assert (tune["reused"], tune["ran"]) == (at, 12 - at)  # continued from its checkpoint, no step twice
    assert tune["counts"] == {"steps": 12, "samples": 96, "skipped": 0}


# -- issue 19 §6: one schema types every key of the file, checked before any work -------------------
BASE = 'store = "s"\nruns = "runs"\n'


@pytest.mark.parametrize("body, message", [
    ('[fetch]\nindexes = "x.json"\n',
     r'run.toml:4: \[fetch\] indexes = "x.json": not a list of texts; write indexes = \["x.json"\]'),
    ('[features]\nsplits = "train"\n',
     r'run.toml:4: \[features\] splits = "train": not a list of texts; write splits = \["train"\]'),
    ('[train.a]\nepochs = 1\n[train.b]\nepochs = 1\n[ensemble.e]\nruns = 5\n',
     r"run.toml:8: \[ensemble.e\] runs = 5: not a list of texts; write runs = \[\"a\", \"b\"\]"),
    ('[train.t]\nepochs = 1\n[train.t1]\nepochs = 1\n[ensemble.e]\nruns = "t1"\n',
     r'run.toml:8: \[ensemble.e\] runs = "t1": not a list of texts; write runs = \["t1"\]'),
    ('workers = "x"\n', r'run.toml:3: workers = "x": not an integer; write workers = 3'),
    ('workers = 0\n', r"run.toml:3: workers = 0: use 1 or more"),
    ('scheduler = "nonsense"\n', r"run.toml:3: scheduler = \"nonsense\": give 'inline' or a dask scheduler address"),
    ('[train.a]\nepochs = 1\n[evaluate]\nsplit = 5\n', r'run.toml:6: \[evaluate\] split = 5: not text; write split = "text"'),
    ('[stats]\nepochs = -1\n', r"run.toml:4: \[stats\] epochs = -1: use 0 to 100,000"),
    ('[fetch]\nindexes = ["x.json"]\nholdout = "validation"\n',
     r'run.toml:5: \[fetch\] holdout = "validation": give NAME=FRACTION with 0 < FRACTION < 1'),
    ('[fetch]\nindexes = ["x.json"]\nsize = "big"\n', r'run.toml:5: \[fetch\] size = "big": not an integer'),
    ('[train.a]\nepochs = "3"\n', r'run.toml:4: \[train.a\] epochs = "3": not an integer; write epochs = 3'),
    ('[train.a]\npretrained = 1\n', r"run.toml:4: \[train.a\] pretrained = 1: not true or false; write pretrained = true"),
    ('[train.a]\nlr = -1\n', r"run.toml:4: \[train.a\]: train config: lr -1 \(--lr\): use more than 0 up to 10"),
])
def test_every_key_of_a_run_file_is_typed_and_checked_before_any_work(tmp_path, body, message):
    cfg = tmp_path / "run.toml"
    cfg.write_text(BASE + body)
    with pytest.raises(UserError, match=message) as e:
        make_plan(load_config(cfg))
    assert "\n" not in str(e.value)
    res = CliRunner().invoke(cli, ["run", str(cfg), "--dry-run"])  # the dry run refuses it the same way
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 1 and str(e.value) in errors[0], res.output
    assert not (tmp_path / "s").exists() and not (tmp_path / "runs").exists()


def test_lists_stay_lists_and_the_data_tables_take_every_fetch_setting(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(BASE + 'workers = 2\n[fetch]\nindexes = ["a.json", "b.json"]\nmax_failed = 0.05\n'
                          'holdout = "validation=0.25"\n[features]\nsplits = ["train"]\n[train.t]\nparts = "deep,wide"\n')
    loaded = load_config(cfg)
    assert loaded.fetch.indexes == (str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert loaded.fetch.max_failed == 0.05 and loaded.features.splits == ("train",)
    assert loaded.cluster.workers == 2 and "workers" not in loaded.train["t"]  # the data stages' workers only
    plan = make_plan(loaded)
    assert plan.names() == ["fetch", "features", "stats", "train.t"]
