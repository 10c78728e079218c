"""The one-command demo, end to end, and its no-work rerun."""
from click.testing import CliRunner

from wdr_pipe.cache import Store
from wdr_pipe.cli import cli


def test_demo_end_to_end_then_rerun_reuses_everything(tmp_path):
    args = ["demo", "--out", str(tmp_path / "d"), "--train", "24", "--validation", "8", "--test", "6",
            "--size", "96", "--workers", "2"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "train: 24 ok, 3 failed (decode_error 1, not_found 1, not_image 1)" in first.output
    assert "38 ok, 0 failed; ran 3, reused 0" in first.output
    store = Store(tmp_path / "d" / "store")
    assert store.splits() == ["test", "train", "validation"] and len(store.feature_keys()) == 1
    assert (store.stats_dir("train") / "sample_weights.parquet").exists()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "38 ok, 0 failed; ran 0, reused 3" in again.output and "train: cached" in again.output
