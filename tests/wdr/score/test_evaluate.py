"""After training: evaluate, predict (submission and new photos), ensemble, compare, report, bad input.

Two tiny runs are trained once per module on a store written by the real
stages (the shared synthetic data set, 96 px, plus a ``holdout`` split fetched
with a missing file and a text file among its images, so it has failures):
``deep`` (pretrained lite0) and ``wdr`` (deep + wide + recurrent). Every
metric is checked against scikit-learn; predictions of new photos against
the store's own predictions of the same images.
"""
import csv
import html.parser
import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn import metrics as skm

from wdr_pipe.cache import index_ids, load_labels
from wdr_pipe.cli import cli
from wdr_pipe.demo import synth
from wdr_pipe.demo.serve import ImageServer
from wdr_pipe.errors import UserError
from wdr_pipe.report import FIGURES, build_report
from wdr_pipe.wdr.score.compare import compare_runs, format_table
from wdr_pipe.wdr.score.ensemble import EnsembleConfig, make_ensemble, out_of_fold
from wdr_pipe.wdr.runs.evalfiles import read_predictions
from wdr_pipe.wdr.score.evaluate import EvalConfig, evaluate
from wdr_pipe.wdr.score.predict import PredictConfig, predict_split, tag_images
from wdr_pipe.wdr.runs.folder import open_run
from wdr_pipe.wdr.train.loop import train
from wdr_pipe.wdr.train.config import TrainConfig

SMALL = dict(image_size=64, batch_size=16, loader_workers=0, checkpoint_every=0, epochs=2, lr=1e-3, pretrained=True)
FAST = dict(loader_workers=0, batch_size=16)


@pytest.fixture(scope="module")
def store(wdr_store, synth_data, tmp_path_factory):
    """The shared store plus a ``holdout`` split: the test images, a missing file and a text file."""
    from wdr_pipe.pipeline.features import FeatureConfig, compute_features
    from wdr_pipe.pipeline.fetch import FetchConfig, FetchOptions, fetch

    data_root, records = synth_data
    root = tmp_path_factory.mktemp("eval") / "store"
    shutil.copytree(wdr_store, root)
    folder = tmp_path_factory.mktemp("holdout")
    (folder / "notes.jpg").write_text("not an image at all")
    extra = {"holdout": {"images": [{"url": (folder / "gone.jpg").as_uri(), "imageId": "h-gone"},
                                    {"url": (folder / "notes.jpg").as_uri(), "imageId": "h-text"}]}}
    recs = [synth.Record("holdout", r.image_id, r.labels, r.path) for r in records if r.split == "test"]
    paths = synth.write_fgvc5_json(folder, recs, data_root.as_uri(), unlabelled=("holdout",), extra=extra)
    fetch(root, [paths["holdout"]], FetchConfig(size=96), FetchOptions(shard_size=40, threads=2),
          label_map=data_root / "label_map.csv", scheduler="inline")
    compute_features(root, cfg=FeatureConfig(hog_size=64), scheduler="inline")
    return root


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for name, kw in (("deep", {}), ("wdr", dict(parts="deep,wide,recurrent", seed=1))):
        train(TrainConfig(store=str(store), out=str(out / name), **SMALL, **kw))
    return out


def evaluated(store, runs, **kw):
    """The deep run evaluated on validation with the defaults (probabilities reused when they match)."""
    return evaluate(EvalConfig(store=str(store), run=str(runs / "deep"), **{"saliency": 3, **FAST, **kw}))


# -- evaluate ------------------------------------------------------------------------------------
def test_evaluate_metrics_equal_scikit_learn(store, runs):
    result = evaluated(store, runs)
    folder = runs / "deep" / "eval" / "validation"
    m = json.loads((folder / "metrics.json").read_text())
    scored, meta = read_predictions(folder / "predictions.parquet")
    ids, y_store = load_labels(store, "validation")
    assert sorted(scored.ids.tolist()) == sorted(ids.tolist()) and m["images"] == len(ids) == 16
    order = {k: i for i, k in enumerate(ids.tolist())}
    assert np.array_equal(scored.labels, y_store[[order[i] for i in scored.ids]])  # truth from the store
    y, p = scored.labels, scored.probs
    t = np.asarray(meta["thresholds"])
    for key, thr in (("at_0.5", 0.5), ("tuned", t)):
        pred = p >= thr
        has = y.sum(0) > 0
        expect = {
            "micro_f1": skm.f1_score(y, pred, average="micro", zero_division=0),
            "macro_f1": skm.f1_score(y, pred, average="macro", zero_division=0),
            "micro_precision": skm.precision_score(y, pred, average="micro", zero_division=0),
            "micro_recall": skm.recall_score(y, pred, average="micro", zero_division=0),
            "macro_precision": skm.precision_score(y, pred, average="macro", zero_division=0),
            "macro_recall": skm.recall_score(y, pred, average="macro", zero_division=0),
            "mean_average_precision": np.mean([skm.average_precision_score(y[:, j], p[:, j])
                                               for j in np.flatnonzero(has)]),
            "subset_accuracy": skm.accuracy_score(y, pred),
            "hamming_accuracy": 1 - skm.hamming_loss(y, pred)}
        for k, v in expect.items():
            assert m[key][k] == pytest.approx(v, abs=1e-9), (key, k)
    assert m["micro_f1"] == m["tuned"]["micro_f1"] and m["micro_f1_at_0.5"] == m["at_0.5"]["micro_f1"]
    trained = json.loads((runs / "deep" / "result.json").read_text())["details"]  # same model, same split
    assert m["micro_f1"] == pytest.approx(trained["val_f1_tuned"]) and m["micro_f1_at_0.5"] == pytest.approx(
        trained["val_f1_at_0.5"])
    rows = list(csv.DictReader(open(folder / "per_label.csv")))
    pr, rc, f1, support = skm.precision_recall_fscore_support(y, p >= t, average=None, zero_division=0)
    assert [int(r["label_id"]) for r in rows] == list(range(1, 25)) and rows[0]["name"] and rows[0]["task"]
    for j, r in enumerate(rows):
        assert (float(r["precision"]), float(r["recall"]), float(r["f1"]), int(r["support"])) == pytest.approx(
            (pr[j], rc[j], f1[j], support[j]), abs=1e-5)
    pred_ids = pq.read_table(folder / "predictions.parquet").column("predicted").to_pylist()
    assert pred_ids == [(np.flatnonzero(row >= t) + 1).tolist() for row in p]  # ids 1..24 in column order
    assert result.details["micro_f1"] == m["micro_f1"] and (folder / "result.json").exists()


def test_tta_flip_and_last_checkpoint(store, runs):
    from wdr_pipe.wdr.score.scorer import ModelScorer
    from wdr_pipe.wdr.data.loader import make_loader

    r = evaluate(EvalConfig(store=str(store), run=str(runs / "deep"), tta="flip", checkpoint="last", saliency=0,
                            **FAST))
    m = json.loads((runs / "deep" / "eval" / "validation" / "metrics.json").read_text())
    assert (m["tta"], m["checkpoint"], m["step"]) == ("flip", "last", 6) and r.reused == 0
    scored, _ = read_predictions(runs / "deep" / "eval" / "validation" / "predictions.parquet")
    plain = ModelScorer(open_run(runs / "deep"), "last", "none", batch_size=16, loader_workers=0)
    batch = next(iter(make_loader(store, "validation", 16, num_workers=0, train=False, config=plain.data_config)))
    import torch

    x = plain.normalize(batch["image"])
    expect = ((plain.probs(x) + plain.probs(torch.flip(x, dims=[3]))) / 2).numpy()
    assert np.allclose(scored.take(batch["image_id"]).probs, expect, atol=1e-5)
    again = evaluate(EvalConfig(store=str(store), run=str(runs / "deep"), tta="flip", checkpoint="last", saliency=0,
                                **FAST))
    assert again.reused == 1 and again.details["micro_f1"] == r.details["micro_f1"]  # same weights: reused


def test_a_run_trained_from_cached_embeddings_is_scored_from_them(store, tmp_path):
    run = tmp_path / "fixed"
    trained = train(TrainConfig(store=str(store), out=str(run), deep="fixed", **SMALL)).details
    assert trained["embedding_key"]
    r = evaluate(EvalConfig(store=str(store), run=str(run), saliency=0, **FAST))
    meta = json.loads(pq.read_schema(run / "eval" / "validation" / "predictions.parquet").metadata[b"wdr_pipe"])
    assert meta["source"]["input"] == f"embeddings {trained['embedding_key']}"
    assert r.details["micro_f1"] == pytest.approx(trained["val_f1_tuned"])  # what training validated
    flip = evaluate(EvalConfig(store=str(store), run=str(run), saliency=0, tta="flip", **FAST))  # needs the images
    meta = json.loads(pq.read_schema(run / "eval" / "validation" / "predictions.parquet").metadata[b"wdr_pipe"])
    assert meta["source"]["input"] == "images" and flip.details["micro_f1"] > 0


# -- predict -------------------------------------------------------------------------------------
def test_submission_has_every_index_row_with_the_fallback_for_failures(store, runs, tmp_path):
    out, probs = tmp_path / "sub" / "submission.csv", tmp_path / "probs.parquet"
    r = predict_split(PredictConfig(store=str(store), run=str(runs / "deep"), out=str(out), split="holdout",
                                    probs=str(probs), **FAST))
    lines = out.read_text().splitlines()
    assert lines[0] == "image_id,label_id"
    rows = [line.split(",") for line in lines[1:]]
    assert [i for i, _ in rows] == index_ids(store, "holdout") and len(rows) == 10
    assert r.counts == {"rows": 10, "predicted": 8, "fallback": 2}
    scored, meta = read_predictions(probs)
    t = np.asarray(meta["thresholds"])
    got = dict(rows)
    for i, row in zip(scored.ids, scored.probs):
        assert got[i] == " ".join(str(k + 1) for k in np.flatnonzero(row >= t))
    run = open_run(runs / "deep")
    _, ytr = load_labels(store, "train")
    freq = ytr.mean(0)
    best = max(range(1, 25), key=lambda k: 2 * np.sort(freq)[::-1][:k].sum() / (k + freq.sum()))
    fallback = sorted((np.argsort(-freq, kind="stable")[:best] + 1).tolist())
    assert np.array_equal(run.train_positives, ytr.sum(0))
    assert got["h-gone"] == got["h-text"] == " ".join(map(str, fallback)) and r.details["fallback_labels"] == fallback


def test_new_photos_are_tagged_as_the_store_would_see_them(store, runs, synth_data, tmp_path):
    data_root, records = synth_data
    test = [r for r in records if r.split == "test"][:2]
    probs = tmp_path / "p.parquet"
    predict_split(PredictConfig(store=str(store), run=str(runs / "wdr"), out=str(tmp_path / "s.csv"), split="holdout",
                                probs=str(probs), **FAST))
    scored, _ = read_predictions(probs)
    png = tmp_path / "photo.png"
    Image.open(data_root / test[1].path).save(png)
    with ImageServer(data_root) as server:
        res = CliRunner().invoke(cli, ["predict", "--run", str(runs / "wdr"), str(data_root / test[0].path),
                                       server.url(test[1].path), str(png), "--json", "--top", "24"])
    assert res.exit_code == 0, res.output
    tagged = json.loads(res.output)
    for t, rec in zip(tagged, [test[0], test[1]]):
        store_p = scored.take([rec.image_id]).probs[0]
        got = {x["label_id"]: x["score"] for x in t["top"]}
        assert np.allclose([got[k] for k in range(1, 25)], store_p, atol=1e-4)  # same resize, same features
        assert all(x["score"] >= x["threshold"] for x in t["labels"]) and t["top"][0]["name"]
    assert tagged[2]["source"] == str(png) and len(tagged[2]["top"]) == 24  # a PNG goes through Pillow's path
    plain = CliRunner().invoke(cli, ["predict", "--run", str(runs / "deep"), str(data_root / test[0].path)])
    assert plain.exit_code == 0 and plain.output.startswith(str(data_root / test[0].path) + ": ")


# -- ensemble and compare ----------------------------------------------------------------------------
def test_ensemble_mean_and_stack_are_runs_that_evaluate_and_predict_accept(store, runs, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_predict

    mean = make_ensemble(EnsembleConfig(runs=(str(runs / "deep"), str(runs / "wdr")), out=str(tmp_path / "mean"),
                                        **FAST))
    assert mean.counts == {"members": 2, "images": 16}
    evaluated(store, runs, saliency=0)
    evaluate(EvalConfig(store=str(store), run=str(runs / "wdr"), saliency=0, **FAST))
    a, _ = read_predictions(runs / "deep" / "eval" / "validation" / "predictions.parquet")
    b, _ = read_predictions(runs / "wdr" / "eval" / "validation" / "predictions.parquet")
    e = evaluate(EvalConfig(store=str(store), run=str(tmp_path / "mean"), saliency=2, **FAST))
    ens, _ = read_predictions(tmp_path / "mean" / "eval" / "validation" / "predictions.parquet")
    assert np.allclose(ens.probs, (a.take(ens.ids).probs + b.take(ens.ids).probs) / 2, atol=1e-6)
    assert e.details["micro_f1"] == pytest.approx(mean.details["val_f1_tuned"])
    rep = build_report(tmp_path / "mean", "validation")  # saliency of the first member; no curves of its own
    assert set(rep.details["left_out"]) == {"curves"} and "saliency" in rep.details["figures"]

    stack = make_ensemble(EnsembleConfig(runs=(str(runs / "deep"), str(runs / "wdr")), out=str(tmp_path / "stack"),
                                         method="stack", folds=4, seed=3, **FAST))
    y, x = a.labels, np.stack([a.probs, b.take(a.ids).probs])
    fold = np.random.default_rng(3).permutation(len(y)) % 4
    c = np.clip(x.astype(np.float64), 1e-6, 1 - 1e-6)
    logit = np.log(c / (1 - c))
    oof = out_of_fold(x, y, 4, 3)
    for j in range(y.shape[1]):
        if all(0 < y[fold != f, j].sum() < (fold != f).sum() for f in range(4)):  # fitted in every fold
            expect = cross_val_predict(LogisticRegression(max_iter=1000), logit[:, :, j].T, y[:, j],
                                       cv=PredefinedSplit(fold), method="predict_proba")[:, 1]
            assert np.allclose(oof[:, j], expect, atol=1e-3), j  # lbfgs stops at tol 1e-4
    s = evaluate(EvalConfig(store=str(store), run=str(tmp_path / "stack"), saliency=0, **FAST))
    m = json.loads((tmp_path / "stack" / "eval" / "validation" / "metrics.json").read_text())
    assert m["probabilities"].startswith("out of fold") and s.details["micro_f1"] == pytest.approx(
        stack.details["val_f1_tuned"])
    sub = predict_split(PredictConfig(store=str(store), run=str(tmp_path / "stack"), out=str(tmp_path / "s.csv"),
                                      split="holdout", **FAST))
    assert sub.counts["rows"] == 10
    header, rows = compare_runs([str(runs / "deep"), str(runs / "wdr"), str(tmp_path / "mean")])
    assert header[:2] == ["run", "kind"] and "parts" in header and "seed" in header
    table = format_table(header, rows)
    assert table.splitlines()[2].startswith("| deep | train |")
    assert f"{e.details['micro_f1']:.4f}" in table.splitlines()[4]
    parsed = list(csv.reader(io.StringIO(format_table(header, rows, "csv"))))
    assert parsed[0] == header and len(parsed) == 4


# -- the report ----------------------------------------------------------------------------------
class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.figures, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "figure":
            self.figures.append(a["id"])
        self.links += [v for k, v in attrs if k in ("href", "src") and v and not v.startswith("data:")]


def test_report_is_one_file_with_every_figure(store, runs):
    evaluated(store, runs)
    r = build_report(runs / "deep", "validation")
    text = (runs / "deep" / "eval" / "validation" / "report.html").read_text()
    parser = _Images()
    parser.feed(text)
    assert sorted(parser.figures) == sorted(f"fig-{f}" for f in FIGURES) and r.details["left_out"] == {}
    assert parser.links == [] and "://" not in text  # nothing to fetch: no URL at all (base64 has no colon)
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(__import__("base64").b64decode(src.split(",", 1)[1])))
        assert im.format == "PNG" and im.size[0] > 300
    assert "not_found" in text and "not_image" in text  # the holdout's failures, by reason


def test_cli_evaluate_compare_and_report(store, runs):
    runner = CliRunner()
    res = runner.invoke(cli, ["evaluate", "--store", str(store), "--run", str(runs / "wdr"), "--workers", "0",
                              "--saliency", "2"])
    assert res.exit_code == 0, res.output
    assert "micro F1" in res.output and "tuned" in res.output and res.output.strip().endswith("report.html")
    m = json.loads((runs / "wdr" / "eval" / "validation" / "metrics.json").read_text())
    assert f"{m['micro_f1']:.4f}" in res.output.split("micro F1", 1)[1].splitlines()[0]
    res = runner.invoke(cli, ["compare", str(runs / "deep"), str(runs / "wdr"), "--format", "csv"])
    assert res.exit_code == 0 and res.output.splitlines()[0].startswith("run,kind,")
    assert res.output.splitlines()[2].split(",")[0] == "wdr" and f"{m['micro_f1']:.4f}" in res.output
    res = runner.invoke(cli, ["report", "--run", str(runs / "wdr"), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["counts"]["figures"] == len(FIGURES)
    res = runner.invoke(cli, ["evaluate", "--store", str(store), "--run", str(runs / "nope")])
    assert res.exit_code == 1 and res.output.startswith("Error: --run ") and len(res.output.splitlines()) == 1


# -- bad input -----------------------------------------------------------------------------------
def _no_checkpoint(runs, tmp_path):
    (tmp_path / "r").mkdir()
    shutil.copy(runs / "deep" / "config.json", tmp_path / "r" / "config.json")
    return tmp_path / "r"


def _other_store(store, tmp_path):
    """The store indexed with a label map of 30 labels instead of 24."""
    import pyarrow as pa

    shutil.copytree(store, tmp_path / "s")
    t = pq.read_table(tmp_path / "s" / "label_map.parquet")
    extra = pa.table({"labelId": pa.array(range(25, 31), pa.int32()), "taskId": pa.array([9] * 6, pa.int32()),
                      "labelName": [f"new {i}" for i in range(6)], "taskName": ["new"] * 6}).cast(t.schema)
    pq.write_table(pa.concat_tables([t, extra]), tmp_path / "s" / "label_map.parquet")
    return str(tmp_path / "s")


def _other_labels(runs, tmp_path):
    shutil.copytree(runs / "wdr", tmp_path / "r", ignore=shutil.ignore_patterns("eval"))
    doc = json.loads((tmp_path / "r" / "config.json").read_text())
    doc["labels"].update(ids=doc["labels"]["ids"][:10], train_positives=doc["labels"]["train_positives"][:10])
    (tmp_path / "r" / "config.json").write_text(json.dumps(doc))
    return tmp_path / "r"


@pytest.mark.parametrize("call, message", [
    (lambda s, r, t: evaluate(EvalConfig(store=s, run=str(_no_checkpoint(r, t)), **FAST)),
     r"no checkpoint checkpoints/best.safetensors \(the run has not saved one\); train it first \('wdr-pipe train --resume"),
    (lambda s, r, t: evaluate(EvalConfig(store=s, run=str(t), **FAST)), r"--run .*: not a wdr-pipe run folder"),
    (lambda s, r, t: evaluate(EvalConfig(store=_other_store(s, t), run=str(r / "deep"), **FAST)),
     r"--store .*: its label space \(30 labels, ids 1..30\) differs from the run's \(24 labels, ids 1..24\); use a "
     r"store indexed with the same labels and label map"),
    (lambda s, r, t: predict_split(PredictConfig(store=_other_store(s, t), run=str(r / "deep"), out=str(t / "o.csv"))),
     r"its label space \(30 labels, ids 1..30\) differs"),
    (lambda s, r, t: evaluate(EvalConfig(store=s, run=str(r / "deep"), split="valid", **FAST)),
     r"--split valid: the store .* has no committed images of that split \(it has: holdout, test, train, validation\)"),
    (lambda s, r, t: evaluate(EvalConfig(store=s, run=str(r / "deep"), split="test", **FAST)),
     r"--split test: an unlabelled split .*; evaluate a labelled split, or use 'wdr-pipe predict --split test'"),
    (lambda s, r, t: predict_split(PredictConfig(store=s, run=str(r / "deep"), out=str(t / "o.csv"), split="nope")),
     r"--split nope: the store .* has no index of that split \(it has: holdout, test, train, validation\)"),
    (lambda s, r, t: predict_split(PredictConfig(store=s, run=str(r / "deep"), out=str(t))), r"--out .*: is a folder"),
    (lambda s, r, t: make_ensemble(EnsembleConfig(runs=(str(r / "deep"), str(_other_labels(r, t))), out=str(t / "e"))),
     r"predicts 10 labels of a space of 24 .* must be trained on the same label space"),
    (lambda s, r, t: make_ensemble(EnsembleConfig(runs=(str(r / "deep"),), out=str(t / "e"))), r"pass two runs or more"),
    (lambda s, r, t: tag_images(str(r / "deep"), [str(t / "notes.txt")]),
     r"notes.txt: not a decodable image \(18 bytes\) \(not_image\); pass a photo"),
    (lambda s, r, t: tag_images(str(r / "deep"), ["http://127.0.0.1:9/new-dress.jpg"]),
     r"http://127.0.0.1:9/new-dress.jpg: unreachable \(.*\); check the URL and the network"),
    (lambda s, r, t: tag_images(str(r / "deep"), [str(t / "missing.jpg")]), r"missing.jpg: no such file"),
    (lambda s, r, t: tag_images(str(r / "wdr"), [str(t / "x.jpg")], wide_features=None),
     r"a run with the wide part needs each photo's HOG and colour features"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(store, runs, tmp_path, call, message):
    (tmp_path / "notes.txt").write_text("not a photo, sorry")
    Image.new("RGB", (80, 90), "red").save(tmp_path / "x.jpg")
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*")}
    with pytest.raises(UserError, match=message):
        call(str(store), runs, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*")} == before  # nothing written, nothing touched
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "e").exists()
    assert not (tmp_path / "r" / "eval").exists()
