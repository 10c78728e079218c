"""``wdr-pipe store info`` and ``wdr_pipe.cache.store_info``: what a store holds, counted from its files.

The store of ``feature_store`` (tests/cache/conftest.py), with a failures file beside its first
train shard, and a store fetched here from an index with a dead URL and rows no fetch has tried.
"""
import json

from click.testing import CliRunner

from helpers import SMALL_FEATURES, add_failures, csv_index
from wdr_pipe.cache import config_dict, label_space, store_info
from wdr_pipe.cli import cli
from wdr_pipe.pipeline.features import FEATURE_CODE_VERSION


def test_store_info_counts_everything(feature_store):
    root, key = feature_store
    add_failures(root)
    info = store_info(root)
    assert info["schema_version"] == 1 and info["labels"] == len(label_space(root))
    tr = info["splits"]["train"]
    assert (tr["index_rows"], tr["ok"], tr["failed"], tr["committed_shards"]) == (48, 48, 3, 3)
    assert tr["failed_by_status"] == {"http_404": 2, "timeout": 1}
    assert info["splits"]["test"]["ok"] == 8
    (f,) = info["features"]
    assert f["key"] == key and f["shards"] == {"test": 1, "train": 3, "validation": 1}
    assert f["config"] == config_dict(SMALL_FEATURES) and f["bytes"] > 0
    assert f["summary"] == ("FeatureConfig hist_dim=8 hog_dim=36 (background_max_s=0.1, background_min_v=0.9, bins=2, "
                            "block=2, block_norm=L2-Hys, cell=8, color_space=HSV, dtype=float32, hog_size=16, "
                            f"ignore_background=True, orientations=9, resize=area, version={FEATURE_CODE_VERSION})")
    assert info["stats"] == {} and info["bytes"] > tr["bytes"] > 0


def test_store_info_command_text_and_json(feature_store):
    root, key = feature_store
    add_failures(root)
    res = CliRunner().invoke(cli, ["store", "info", str(root)])
    assert res.exit_code == 0, res.output
    assert "schema version 1" in res.output and "http_404 2, timeout 1" in res.output
    assert key in res.output and "label stats: none" in res.output
    train_line = next(line for line in res.output.splitlines() if line.startswith("train"))
    assert train_line.split()[:4] == ["train", "48", "48", "3"]
    res = CliRunner().invoke(cli, ["store", "info", str(root), "--json"])
    assert res.exit_code == 0
    assert json.loads(res.output)["splits"]["validation"]["ok"] == 16


def test_store_info_tells_fetched_failed_and_not_yet_attempted_rows(synth_data, tmp_path):
    from wdr_pipe.pipeline.features import FeatureConfig, compute_features
    from wdr_pipe.pipeline.stats import StatsConfig, compute_stats

    data_root, records = synth_data
    train = [r for r in records if r.split == "train"][:40]
    index = csv_index(tmp_path / "train.csv", data_root, train, urls={"3": "file:///nowhere/3.jpg"})
    root = tmp_path / "store"
    res = CliRunner().invoke(cli, ["fetch", str(index), "--store", str(root), "--limit", "10", "--shard-size", "4",
                                   "--size", "48", "--resize-mode", "center_crop", "--scheduler", "inline"])
    assert res.exit_code == 0, res.output
    compute_features(root, cfg=FeatureConfig(hog_size=32, bins=3), scheduler="inline")
    compute_stats(root, cfg=StatsConfig(epochs=5, dim=3))
    info = store_info(root)
    tr = info["splits"]["train"]
    assert (tr["index_rows"], tr["ok"], tr["failed"], tr["not_attempted"]) == (40, 9, 1, 30)
    assert (tr["committed_shards"], tr["shards"], tr["shard_size"]) == (3, 10, 4)
    assert tr["image"] == "48x48 centre crop, JPEG q95" and tr["fetch_config"]["resize_mode"] == "center_crop"
    (f,) = info["features"]
    assert f["config"] == config_dict(FeatureConfig(hog_size=32, bins=3))
    assert f["summary"].endswith(f"version={FeatureConfig().version})")  # whole, never cut
    st = info["stats"]["train"]
    assert st["config"] == config_dict(StatsConfig(epochs=5, dim=3)) and st["images"] == 9
    res = CliRunner().invoke(cli, ["store", "info", str(root)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    train_line = next(line for line in lines if line.startswith("train"))
    assert train_line.split()[:6] == ["train", "40", "9", "1", "30", "3/10"] and "48x48 centre crop" in train_line
    assert any("not yet: index rows no fetch has tried" in line for line in lines)
    long = [line for line in lines if len(line) > 100 and str(root) not in line]  # paths are as long as they are
    assert not long, long
    text = " ".join(line.strip() for line in lines)
    assert "background_min_v=0.9" in text and "version=" in text and "..." not in text
    doc = json.loads(CliRunner().invoke(cli, ["store", "info", str(root), "--json"]).output)
    assert doc["features"][0]["config"]["type"] == "FeatureConfig" and doc["stats"]["train"]["config"]["dim"] == 3
    assert doc["splits"]["train"]["not_attempted"] == 30
