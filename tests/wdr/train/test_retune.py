"""Re-tuning a finished run's thresholds (wdr_pipe.wdr.train.retune, ``wdr-pipe thresholds``).

One real run (pretrained ``tf_efficientnet_lite0`` at 64 px, Deep + Wide +
Recurrent on the 12 most frequent labels, 2 epochs) on the shared generated
store with features and label statistics; each test re-tunes a copy of it.
"""
import json
import shutil

import pytest
from click.testing import CliRunner

from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.wdr.runs.folder import RunFolder
from wdr_pipe.wdr.train.retune import retune_thresholds
from wdr_pipe.wdr.train.loop import train
from wdr_pipe.wdr.train.config import TrainConfig


@pytest.fixture(scope="module")
def finished(wdr_store, tmp_path_factory):
    cfg = TrainConfig(store=str(wdr_store), out=str(tmp_path_factory.mktemp("retune") / "run"), image_size=64,
                      batch_size=16, loader_workers=0, checkpoint_every=0, epochs=2, lr=1e-3, pretrained=True,
                      parts="deep,wide,recurrent", labels="top:12", thresholds="tune")
    return cfg, train(cfg)


@pytest.fixture
def run(finished, tmp_path):
    cfg, _ = finished
    shutil.copytree(cfg.out, tmp_path / "run")
    return RunFolder(tmp_path / "run")


def read(path):
    return json.loads(path.read_text())


def test_the_runs_own_settings_give_back_its_thresholds(finished, run):
    _, trained = finished
    before, details = read(run.thresholds), read(run.result)["details"]
    result = retune_thresholds(run.root, mode="tune", min_positives=5)
    after = read(run.thresholds)
    assert after["thresholds"].keys() == before["thresholds"].keys() and len(after["thresholds"]) == 12
    assert after["thresholds"] == pytest.approx(before["thresholds"], abs=1e-6)  # the same predictions
    assert after["fallback"] == before["fallback"] and after["min_positives"] == 5
    assert result.stage == "thresholds" and result.counts == {"labels": 12, "val_images": 16}
    assert result.details["val_f1_tuned"] == pytest.approx(trained.details["val_f1_tuned"], abs=1e-9)
    now = read(run.result)["details"]
    assert now["retuned"]["thresholds"] == "tune" and now["retuned"]["min_positives"] == 5
    assert {k: v for k, v in now.items() if k != "retuned"} == pytest.approx(details)  # weights, best F1: unchanged


def test_cv_reports_the_out_of_fold_gain_and_a_later_tune_drops_it(run):
    cv = retune_thresholds(run.root, mode="cv")
    assert 0 <= cv.details["val_f1_tuned_out_of_fold"] <= 1
    assert read(run.result)["details"]["val_f1_tuned_out_of_fold"] == cv.details["val_f1_tuned_out_of_fold"]
    every = retune_thresholds(run.root, min_positives=1000)  # no label has that many: all take the global one
    doc = read(run.thresholds)
    assert len(doc["fallback"]) == 12 and set(doc["thresholds"].values()) == {doc["global_threshold"]}
    assert every.details["val_f1_tuned"] == every.details["val_f1_global"]
    assert "val_f1_tuned_out_of_fold" not in read(run.result)["details"]  # not this tuning's figure


def test_the_command_prints_the_result_and_the_figures(run):
    res = CliRunner().invoke(cli, ["thresholds", "--run", str(run.root), "--thresholds", "cv", "--min-positives", "3"])
    assert res.exit_code == 0, res.output
    assert "thresholds " in res.output and "per class" in res.output and "out of fold" in res.output
    assert read(run.thresholds)["min_positives"] == 3
    res = CliRunner().invoke(cli, ["thresholds", "--run", str(run.root), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["details"]["thresholds"] == "tune"


def test_auto_keeps_the_rule_that_holds_out_of_fold_and_says_so(run):
    res = CliRunner().invoke(cli, ["thresholds", "--run", str(run.root), "--thresholds", "auto"])
    assert res.exit_code == 0, res.output
    assert "kept: " in res.output and "out of fold (the figure to expect on new images)" in res.output
    d = read(run.result)["details"]
    by_rule = {k[len("val_f1_out_of_fold_"):]: v for k, v in d.items() if k.startswith("val_f1_out_of_fold_")}
    assert d["thresholds"] == "auto" and d["threshold_rule"] in by_rule and "global" in by_rule
    assert d["val_f1_tuned_out_of_fold"] == max(by_rule.values())
    doc = read(run.thresholds)
    if d["threshold_rule"] == "global":
        assert set(doc["thresholds"].values()) == {doc["global_threshold"]} == {d["global_threshold"]}
    tune = retune_thresholds(run.root, mode="tune")  # another mode drops auto's own figures
    assert not {"threshold_rule", "val_f1_out_of_fold_global"} & set(read(run.result)["details"])
    assert tune.details["thresholds"] == "tune"


def test_bad_input_is_one_clear_error(finished, run, tmp_path):
    for kw, message in [(dict(mode="none"), r"--thresholds none: use tune .* or cv"),
                        (dict(min_positives=0), r"min_positives 0 \(--min-positives\): use 1 to 1,000,000")]:
        with pytest.raises(UserError, match=message):
            retune_thresholds(run.root, **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: not a wdr-pipe run folder .* pass the --out folder"):
        retune_thresholds(tmp_path / "empty")
    run.result.unlink()
    with pytest.raises(UserError, match=r"an unfinished run \(no result.json\); finish it first with "
                                        r"'wdr-pipe train --resume"):
        retune_thresholds(run.root)


def test_a_changed_store_is_refused_and_nothing_is_written(finished, run, tmp_path):
    cfg, _ = finished
    store = tmp_path / "store"
    shutil.copytree(cfg.store, store)
    marker = sorted((store / "images" / "validation").glob("*.stats.json"))[0]
    marker.write_text(marker.read_text() + " ")
    doc = read(run.config)
    doc["settings"]["store"] = doc["store"]["path"] = str(store)
    run.config.write_text(json.dumps(doc))
    before = (run.thresholds.read_text(), run.result.read_text())
    with pytest.raises(UserError, match=r"the store .* changed since this run started"):
        retune_thresholds(run.root)
    assert (run.thresholds.read_text(), run.result.read_text()) == before


def test_a_run_trained_from_cached_embeddings_is_scored_from_them(copy_store, tmp_path):
    """--deep fixed trains from the store's cached embeddings; re-tuning scores from them too, so the
    thresholds come back as training tuned them."""
    cfg = TrainConfig(store=str(copy_store), out=str(tmp_path / "fixed"), image_size=64, batch_size=16, loader_workers=0,
                      checkpoint_every=0, epochs=2, lr=1e-2, pretrained=True, deep="fixed", parts="deep,wide")
    trained = train(cfg)
    assert trained.details["embedding_key"]  # it did train from them
    run = RunFolder(cfg.out)
    before = read(run.thresholds)
    result = retune_thresholds(run.root)
    assert read(run.thresholds)["thresholds"] == pytest.approx(before["thresholds"], abs=1e-6)
    assert result.details["val_f1_at_0.5"] == pytest.approx(trained.details["val_f1_at_0.5"], abs=1e-9)
