"""``fetch --holdout NAME=FRACTION``: a deterministic hold-out split by a hash of the image id, recorded."""
import json

import pytest
from click.testing import CliRunner

from wdr_pipe.cache import Store, load_labels
from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.fetch import FetchConfig, FetchOptions, fetch


def one_split_index(tmp_path, synth_data, name="clothing.csv"):
    root, records = synth_data
    rows = [r for r in records if r.split != "test"]
    lines = ["image_id,url,labels"] + [f"{r.split}-{r.image_id},{(root / r.path).as_uri()},"
                                       f"{' '.join(map(str, r.labels))}" for r in rows]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path, rows


def test_holdout_cuts_a_deterministic_split_and_records_it(tmp_path, synth_data):
    index, rows = one_split_index(tmp_path, synth_data)
    args = dict(cfg=FetchConfig(size=64), opts=FetchOptions(shard_size=20), split="train", scheduler="inline")
    first = fetch(tmp_path / "s", [index], holdout=("validation", 0.33), **args)
    store = Store(tmp_path / "s")
    assert store.splits() == ["train", "validation"]
    train_ids, _ = load_labels(store, "train")
    val_ids, _ = load_labels(store, "validation")
    assert sorted([*train_ids, *val_ids]) == sorted(f"{r.split}-{r.image_id}" for r in rows)  # every row once
    assert 0.15 < len(val_ids) / len(rows) < 0.5
    record = json.loads(store.holdout_path("validation").read_text())
    assert record["from"] == "train" and record["fraction"] == 0.33
    again = fetch(tmp_path / "s", [index], holdout=("validation", 0.33), **args)  # same cut: nothing to do
    assert again.ran == 0 and again.ok == first.ok
    other = fetch(tmp_path / "other", [index], holdout=("validation", 0.33), **args)  # same rule elsewhere
    assert load_labels(Store(tmp_path / "other"), "validation")[0].tolist() == val_ids.tolist()
    with pytest.raises(UserError, match="index for split 'train' differs"):
        fetch(tmp_path / "s", [index], holdout=("validation", 0.5), **args)


def test_holdout_errors_are_one_line(tmp_path, synth_data):
    index, _ = one_split_index(tmp_path, synth_data)
    second, _ = one_split_index(tmp_path, synth_data, "second.csv")
    with pytest.raises(UserError, match="needs exactly one labelled input split"):
        fetch(tmp_path / "s", [index, second], FetchConfig(size=64), holdout=("validation", 0.3), scheduler="inline")
    res = CliRunner().invoke(cli, ["fetch", str(index), "--store", str(tmp_path / "s"), "--holdout", "validation"])
    assert res.exit_code == 2 and "give NAME=FRACTION with 0 < FRACTION < 1" in res.output
    res = CliRunner().invoke(cli, ["fetch", str(index), "--store", str(tmp_path / "s"), "--holdout", "clothing=0.2"])
    assert res.exit_code == 1 and "the inputs already give a split 'clothing'" in res.output
