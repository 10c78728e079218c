"""Label statistics: counts, co-occurrence, GloVe-style embeddings, loss weights, caching."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from helpers import csv_store, subprocess_env
from wdr_pipe.cache import (Store, cooccurrence_matrix, label_counts, label_embeddings, label_space, label_weights,
                            load_labels, sample_weights, commit_path)
from wdr_pipe.cache import LABEL_STATS_TABLES
from wdr_pipe.cache.schema import IMAGES
from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.stats.glove import fit_glove
from wdr_pipe.pipeline.stats import (StatsConfig, compute_stats, cooccurrence, multi_hot_csr, per_image_weights,
                                     per_label_weights, pos_weights, split_stats)

FAST = StatsConfig(epochs=300)


def test_cooccurrence_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    space = np.array([2, 3, 5, 7, 11, 13], np.int32)
    lists = [list(rng.choice(space, size=rng.integers(0, 5))) for _ in range(300)] + [None]  # repeats, empty, null
    x = multi_hot_csr(pa.array(lists, pa.list_(pa.int32())), space)
    want = np.zeros((6, 6), np.int64)
    for labs in lists:
        pos = sorted({int(np.searchsorted(space, v)) for v in labs or []})
        for a in pos:
            for b in pos:
                want[a, b] += 1
    assert np.array_equal(cooccurrence(x), want)
    assert np.array_equal(cooccurrence(x, rows_per_step=7), want)  # in steps
    assert np.array_equal(cooccurrence(x), (x.T @ x).toarray())
    with pytest.raises(UserError, match="label id 4 is not in the label space"):
        multi_hot_csr(pa.array([[2, 4]], pa.list_(pa.int32())), space)


def test_label_weight_formula_properties():
    rng = np.random.default_rng(1)
    f = rng.integers(1, 100_000, size=228).astype(float)
    for alpha in (0.75, 0.5, 1.0):
        w = per_label_weights(f, alpha)
        a, b = rng.integers(228, size=(2, 50))
        np.testing.assert_allclose((w[a] * f[a]) / (w[b] * f[b]), (f[a] / f[b]) ** alpha, rtol=1e-10)
        np.testing.assert_allclose((w * f).sum(), f.sum(), rtol=1e-10)
    assert np.allclose(per_label_weights(f, 1.0), 1.0)             # alpha = 1: no reweighting
    w = per_label_weights(np.array([10.0, 0.0, 40.0]))             # an unseen label gets no weight
    assert w[1] == 0 and w[0] > w[2] > 0


def test_image_weights_and_pos_weights():
    space = np.arange(1, 4, dtype=np.int32)
    x = multi_hot_csr(pa.array([[1, 2], [3], [], [2, 2]], pa.list_(pa.int32())), space)
    w = np.array([2.0, 4.0, 8.0])
    assert per_image_weights(x, w).tolist() == [3.0, 8.0, 1.0, 4.0]
    pw = pos_weights(np.array([1, 50, 99, 0]), n=100, clip=20)
    np.testing.assert_allclose(pw, [20.0, 1.0, 1 / 20, 20.0])


def _blocks(seed=1):
    """Counts from 5000 images: 4 blocks of 6 labels, images mostly inside one block, some spill to the next."""
    rng = np.random.default_rng(seed)
    c = np.zeros((24, 24))
    for _ in range(5000):
        k = rng.integers(4)
        labs = set(k * 6 + rng.choice(6, size=rng.integers(2, 5), replace=False))
        if rng.random() < 0.3:
            labs.add((k + 1) % 4 * 6 + rng.integers(6))
        idx = np.array(sorted(labs))
        c[np.ix_(idx, idx)] += 1
    return c


def test_glove_fits_a_structured_matrix():
    c = _blocks()
    vec, losses = fit_glove(c, dim=8, epochs=1000)
    assert losses[-1] < losses[0] / 100
    dots = vec @ vec.T
    block = np.arange(24) // 6
    same = (block[:, None] == block[None, :]) & ~np.eye(24, dtype=bool)
    never = c == 0
    assert never.sum() > 100
    assert dots[same].min() > dots[never].max()
    again, _ = fit_glove(c, dim=8, epochs=1000)
    other, _ = fit_glove(c, dim=8, epochs=1000, seed=1)
    assert np.array_equal(vec, again) and not np.array_equal(vec, other)


def _mtimes(store, splits=("train", "validation")):
    return {(s, p.name): p.stat().st_mtime_ns for s in splits for p in store.label_stats_dir(s).iterdir()}


def test_compute_stats_on_a_store(image_store, synth_data):
    store = Store(image_store)
    events = []
    summary = compute_stats(store, cfg=FAST, progress=events.append)
    assert {k: v["status"] for k, v in summary.splits.items()} == {"test": "skipped", "train": "computed",
                                                           "validation": "computed"}
    assert events[-1].done == events[-1].total == 3
    assert not store.label_stats_dir("test").exists()
    space = label_space(store)
    ids, y = load_labels(store, "train")
    labels, counts = label_counts(store, "train")
    assert labels.tolist() == space.tolist() and counts.tolist() == y.sum(0).tolist()
    recs = [r for r in synth_data[1] if r.split == "train"]
    assert counts[space.tolist().index(recs[0].labels[0])] == sum(recs[0].labels[0] in r.labels for r in recs)
    cm = cooccurrence_matrix(store, "train")
    assert np.array_equal(cm, y.T.astype(np.int64) @ y)
    co = pq.read_table(store.label_stats_dir("train") / "cooccurrence.parquet")
    assert co.schema.field("count").type == pa.int64()
    assert all(a < b for a, b in zip(co["label_a"].to_pylist(), co["label_b"].to_pylist()))
    assert min(co["count"].to_pylist()) > 0
    lab, vec = label_embeddings(store, "train")
    assert lab.tolist() == space.tolist() and vec.shape == (len(space), 20) and vec.dtype == np.float32
    lw = label_weights(store, "train")
    assert lw.columns.tolist() == ["label", "count", "weight", "pos_weight"]
    np.testing.assert_allclose((lw["weight"] * lw["count"]).sum(), lw["count"].sum(), rtol=1e-5)
    sid, sw = sample_weights(store, "train")
    assert sid.tolist() == ids.tolist() == [r.image_id for r in recs]
    w = lw["weight"].to_numpy()
    np.testing.assert_allclose(sw, (y @ w) / y.sum(1), rtol=1e-5)
    doc = json.loads((store.label_stats_dir("train") / "config.json").read_text())
    assert doc["config"]["epochs"] == 300 and doc["images"] == 48 and doc["fit"]["loss_end"] < doc["fit"]["loss_start"]


def test_rerun_does_no_work_until_inputs_or_config_change(image_store):
    store = Store(image_store)
    compute_stats(store, cfg=FAST)
    before = _mtimes(store)
    summary = compute_stats(store, cfg=FAST)
    assert [summary.splits[s]["status"] for s in ("train", "validation")] == ["cached", "cached"]
    assert _mtimes(store) == before  # nothing rewritten
    # a new committed image shard of train: train is redone, validation is not
    d = store.images_dir("train")
    t = pq.read_table(d / "part-00002.parquet")
    t = t.set_column(0, "image_id", pa.array([f"x{i}" for i in range(t.num_rows)], pa.string()))
    pq.write_table(t.cast(IMAGES), d / "part-00003.parquet")
    assert compute_stats(store, cfg=FAST).splits["train"]["status"] == "cached"  # not committed yet: not an input
    shutil.copy(commit_path(d / "part-00002.parquet"), commit_path(d / "part-00003.parquet"))
    summary = compute_stats(store, cfg=FAST)
    assert summary.splits["train"]["status"] == "computed" and summary.splits["validation"]["status"] == "cached"
    assert summary.splits["train"]["images"] == 56
    assert len(sample_weights(store, "train")[0]) == 56
    # a changed setting redoes both; a half-written stats folder (no config.json) is redone
    summary = compute_stats(store, ["train", "validation"], cfg=StatsConfig(epochs=300, alpha=0.5))
    assert {s["status"] for s in summary.splits.values()} == {"computed"}
    (store.label_stats_dir("validation") / "config.json").unlink()
    assert compute_stats(store, ["validation"], cfg=StatsConfig(epochs=300, alpha=0.5)).splits["validation"]["status"] \
        == "computed"
    with pytest.raises(UserError, match="--split nope: no such split"):
        compute_stats(store, ["nope"], cfg=FAST)


def test_readers_name_the_command_when_stats_are_missing(image_store):
    with pytest.raises(UserError, match="wdr-pipe stats --store .* --split train"):
        cooccurrence_matrix(image_store, "train")


def test_stats_command(image_store):
    res = CliRunner().invoke(cli, ["stats", "--store", str(image_store), "--split", "train", "--dim", "8",
                                   "--epochs", "200"])
    assert res.exit_code == 0, res.output
    assert "train: 48 images" in res.output
    assert sorted(p.stem for p in (image_store / "stats" / "train").glob("*.parquet")) == sorted(LABEL_STATS_TABLES)
    assert label_embeddings(image_store, "train")[1].shape[1] == 8
    res = CliRunner().invoke(cli, ["stats", "--store", str(image_store), "--split", "train", "--dim", "8",
                                   "--epochs", "200"])
    assert "train: up to date" in res.output
    res = CliRunner().invoke(cli, ["store", "info", str(image_store)])
    assert "train: complete" in res.output
    res = CliRunner().invoke(cli, ["stats", "--store", str(image_store), "--split", "valid"])
    assert res.exit_code == 1 and "--split valid: no such split" in res.output
    res = CliRunner().invoke(cli, ["stats", "--store", str(image_store), "--alpha", "2"])
    assert res.exit_code == 2 and "'--alpha': 2.0 is not in the range 0<=x<=1" in res.output
    with pytest.raises(UserError, match=r"stats config: alpha 2.0 \(--alpha\): use 0 to 1"):  # the library says the same
        StatsConfig(alpha=2.0)


# -- label ids far apart, label 0, and a rerun that fails ----------------------------

def _store_with_labels(synth_data, root, labels):
    """A store of len(labels) generated images fetched by file:// URL, image i labelled labels[i]."""
    data_root, records = synth_data
    train = [r for r in records if r.split == "train"][:len(labels)]
    return csv_store(root, data_root, train, labels, size=48, shard_size=4)[0]


def _limit_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a run that allocates by the largest id dies fast


def test_a_far_label_id_without_a_label_map_needs_no_matrix_of_its_size(synth_data, tmp_path):
    store = _store_with_labels(synth_data, tmp_path, [[1, 5], [5, 99999], [1, 5, 99999], [5]])
    proc = subprocess.run([sys.executable, "-m", "wdr_pipe.cli", "stats", "--store", str(store), "--epochs", "50"],
                          capture_output=True, text=True, timeout=300, env=subprocess_env(), preexec_fn=_limit_memory)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "train: 4 images, 99999 labels" in proc.stdout
    labels, counts = label_counts(store, "train")
    assert len(labels) == 99999 and {int(a): int(n) for a, n in zip(labels, counts) if n} == {1: 2, 5: 4, 99999: 2}
    co = pq.read_table(store / "stats" / "train" / "cooccurrence.parquet").to_pylist()
    assert sorted((r["label_a"], r["label_b"], r["count"]) for r in co) == [(1, 5, 2), (1, 99999, 1), (5, 99999, 2)]
    lab, vec = label_embeddings(store, "train")
    assert vec.shape == (99999, 20) and np.isfinite(vec).all()
    with pytest.raises(UserError, match="99999 labels would make a 99999 x 99999 matrix; read that table"):
        cooccurrence_matrix(store, "train")


def test_dense_statistics_equal_those_over_the_whole_label_space():
    space = np.arange(1, 41, dtype=np.int32)
    lists = [[3, 7], [7, 9, 3], [9], [], None, [3], [7, 9]]
    x = multi_hot_csr(pa.array(lists, pa.list_(pa.int32())), space)
    tables, _ = split_stats(np.array([str(i) for i in range(len(lists))]), x, space, StatsConfig(epochs=50))
    full = cooccurrence(x)  # the (40, 40) matrix the dense path never builds
    assert tables["label_counts"]["count"].to_pylist() == np.diag(full).tolist()
    a, b = np.nonzero(np.triu(full, k=1))
    assert sorted(zip(tables["cooccurrence"]["label_a"].to_pylist(), tables["cooccurrence"]["label_b"].to_pylist(),
                      tables["cooccurrence"]["count"].to_pylist())) == \
        sorted(zip(space[a].tolist(), space[b].tolist(), full[a, b].tolist()))
    vectors = np.array(tables["label_embeddings"]["vector"].to_pylist())
    whole, _ = fit_glove(full, dim=20, epochs=50)  # a fit over the whole space: the same vectors
    np.testing.assert_allclose(vectors, whole, rtol=1e-5, atol=1e-6)


def test_label_zero_without_a_label_map_is_in_the_label_space(synth_data, tmp_path):
    store = _store_with_labels(synth_data, tmp_path, [[0, 2], [2], [0]])
    assert label_space(store).tolist() == [0, 1, 2]
    summary = compute_stats(store, cfg=FAST)
    assert summary.splits["train"]["status"] == "computed"
    assert label_counts(store, "train")[1].tolist() == [2, 0, 2]


@pytest.fixture
def small_disk(tmpfs):
    """A 4m tmpfs (see conftest.tmpfs)."""
    return tmpfs("4m")


def test_a_stats_rerun_that_fails_keeps_the_old_stats_complete(image_store, small_disk):
    store = small_disk / "store"
    shutil.copytree(image_store, store, ignore=shutil.ignore_patterns("test", "validation"))
    compute_stats(store, ["train"], cfg=StatsConfig(dim=2, epochs=10))
    before = {p.name: p.read_bytes() for p in (store / "stats" / "train").iterdir()}
    free = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 64 * 1024))  # 64 KiB left
    with pytest.raises(UserError, match="no space left on device"):  # 1024-float vectors do not fit
        compute_stats(store, ["train"], cfg=StatsConfig(dim=1024, epochs=1))
    assert {p.name: p.read_bytes() for p in (store / "stats" / "train").iterdir()} == before
    assert label_embeddings(store, "train")[1].shape[1] == 2  # still complete and readable
