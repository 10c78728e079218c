"""The one-command demo, end to end (data stages and the ablation), and its no-work rerun."""
import re
import tomllib

import pytest

from click.testing import CliRunner

from wdr_pipe.cache import Store
from wdr_pipe.cli import cli


@pytest.mark.slow
def test_demo_end_to_end_then_rerun_reuses_everything(tmp_path):
    args = ["demo", "--out", str(tmp_path / "d"), "--train", "24", "--validation", "8", "--test", "6",
            "--size", "96", "--image-size", "64", "--epochs", "1", "--workers", "2"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "train: 24 ok, 3 failed (decode_error 1, not_found 1, not_image 1)" in first.output
    assert "38 ok, 0 failed; ran 3, reused 0" in first.output
    store = Store(tmp_path / "d" / "store")
    assert store.splits() == ["test", "train", "validation"] and len(store.features.keys()) == 1
    assert (store.label_stats_dir("train") / "sample_weights.parquet").exists()
    config = tomllib.loads((tmp_path / "d" / "demo.toml").read_text())  # the user can edit and rerun it
    assert set(config["train"]) == {"deep_fixed", "deep_half", "deep_tune", "wdr", "wdr_weighted", "wdr_lpft"}
    rows = [line for line in first.output.splitlines() if line.startswith(("| Deep", "| Ensembled"))]
    assert len(rows) == 7 and all(0 <= float(cell) <= 1 for r in rows for cell in r.split("|")[2:4])
    for name in [*config["train"], "ensemble"]:
        assert (tmp_path / "d" / "runs" / name / "result.json").exists()
    submission = (tmp_path / "d" / "submission.csv").read_text().splitlines()
    assert submission[0] == "image_id,label_id" and len(submission) == 1 + 6  # every test image
    assert (tmp_path / "d" / "runs" / "wdr" / "eval" / "validation" / "report.html").exists()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "38 ok, 0 failed; ran 0, reused 3" in again.output and "train: cached" in again.output
    stages = [line for line in again.output.splitlines()
              if re.match(r"(fetch|features|stats|train) [0-9a-f]{12}: ", line) and "; ran " in line]
    assert len(stages) == 3 + 6 and all("; ran 0, reused" in line for line in stages)  # no data or training work
    assert [line for line in again.output.splitlines() if line.startswith(("| Deep", "| Ensembled"))] == rows
