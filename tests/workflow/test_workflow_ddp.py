"""``wdr-pipe run`` under a real ``torchrun --nproc_per_node 2`` (gloo, CPU): rank 0 alone runs the
data and evaluation steps, both ranks train, one table; a failing data step ends both ranks.

The images come from a loopback server that counts requests, so "fetched once" is a count of
requests per image, not a timing.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PACKAGE_PARENT, subprocess_env
from wdr_pipe.demo import synth
from wdr_pipe.demo.serve import ImageServer
from wdr_pipe.wdr.runs.folder import RunFolder

SPLITS = {"train": 32, "validation": 16}
TINY = 'epochs = 1\nbatch_size = 8\nimage_size = 64\nworkers = 0\nthresholds = "none"\n'
HEADER = "step                  status    seconds  result"

pytestmark = pytest.mark.slow  # torchrun starts real processes: seconds each


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, index paths, label map) of a small generated data set on loopback."""
    root = tmp_path_factory.mktemp("ddp-data")
    records = synth.make_dataset(root, SPLITS, seed=3, size_range=(120, 180), processes=1)
    with ImageServer(root) as srv:
        paths = synth.write_fgvc5_json(root, records, srv.base_url)
        yield srv, [paths[s] for s in SPLITS], root / "label_map.csv"


def write(folder: Path, indexes, label_map) -> Path:
    cfg = folder / "run.toml"
    cfg.write_text(f'store = "store"\nruns = "runs"\nscheduler = "inline"\n\n'
                   f'[fetch]\nindexes = {json.dumps([str(p) for p in indexes])}\nlabel_map = "{label_map}"\n'
                   f'size = 72\nshard_size = 16\n\n[features]\nhog_size = 32\n\n[stats]\nepochs = 20\n\n'
                   f'[train.tiny]\n{TINY}\n[evaluate]\nsplit = "validation"\n')
    return cfg


def torchrun(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "wdr_pipe.cli", "run", *map(str, args)],
                          env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout)


def test_rank0_runs_the_data_steps_once_both_ranks_train_and_one_table_is_printed(served, tmp_path):
    srv, indexes, label_map = served
    srv.reset()
    cfg = write(tmp_path, indexes, label_map)
    out = torchrun(cfg)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    # the data steps ran on one rank: every image was requested exactly once
    hits = srv.hits
    assert len(hits) == sum(SPLITS.values()) and set(hits.values()) == {1}, hits
    steps = [line.split(": ")[1] for line in out.stderr.splitlines()
             if line.startswith("INFO wdr_pipe: ") and (": ran in " in line or ": reused in " in line)]
    assert steps == ["fetch", "features", "stats", "train.tiny", "evaluate.tiny"], steps  # each once, by rank 0
    # both ranks trained together: one DDP run, its files written once, world size 2
    run = RunFolder(tmp_path / "runs" / "tiny")
    assert json.loads(run.config.read_text())["world_size"] == 2
    assert json.loads(run.result.read_text())["details"]["world_size"] == 2
    assert (run.root / "eval" / "validation" / "metrics.json").exists()  # evaluate ran after training
    # one step table (and one compare table), from rank 0
    assert out.stdout.count(HEADER) == 1, out.stdout
    rows = [line.split()[:2] for line in out.stdout.splitlines() if line.startswith(("fetch ", "train.tiny "))]
    assert rows == [["fetch", "ran"], ["train.tiny", "ran"]]
    assert out.stdout.count("| run ") + out.stdout.count("| name ") <= 1

    # --force train.tiny: the old run is set aside once, before both ranks train; the data is reused
    srv.reset()
    again = torchrun(cfg, "--force", "train.tiny")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-4000:]
    assert not srv.hits  # fetch reused: no request
    kept = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(kept) == 2 and kept[0] == "tiny" and kept[1].startswith("tiny.before-"), kept
    assert json.loads(run.result.read_text())["details"]["world_size"] == 2
    assert again.stdout.count(HEADER) == 1 and "train.tiny            ran*" in again.stdout


def test_a_failing_data_step_ends_every_rank_with_its_one_line_error(served, tmp_path):
    _, indexes, label_map = served
    missing = tmp_path / "nope.json"  # passes the config check; fetch finds no such file on rank 0
    cfg = write(tmp_path, [missing], label_map)
    out = torchrun(cfg, timeout=120)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2 and errors[0] == errors[1] and "nope.json" in errors[0], out.stderr[-4000:]
    assert f'File "{PACKAGE_PARENT / "wdr_pipe"}' not in out.stderr  # no rank's traceback, only torchrun's summary
    assert not (tmp_path / "runs").exists()
