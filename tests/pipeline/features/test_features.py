"""The features stage on a real store: layout, cache key, reuse, failures, dask, CLI."""
import json
import shutil

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from skimage.feature import hog

from wdr_pipe.cache import Store, commit_path, config_dict, config_key, shard_identity
from wdr_pipe.cache.atomic import write_parquet_atomic
from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.features import FeatureConfig, compute_features, decode_resize

ROWS = {"train": 48, "validation": 16, "test": 8}
SHARDS = {"train": 3, "validation": 1, "test": 1}


def run(store, cfg=FeatureConfig(), **kw):
    """compute_features in this process; returns (result, what this call decoded and computed)."""
    result = compute_features(store, cfg=cfg, scheduler="inline", **kw)
    return result, {"images_decoded": result.details["images_computed"], "shards_computed": result.ran}


def feature_files(store, key):
    return sorted(p for p in (store / "features" / key).rglob("*") if p.is_file())


def snapshot(store, key):
    return {p: p.read_bytes() for p in feature_files(store, key)}


def test_writes_row_aligned_shards_under_the_config_key(image_store):
    cfg = FeatureConfig()
    summary, work = run(image_store, cfg)
    assert summary.key == config_key(cfg) == cfg.key
    assert work == {"images_decoded": 72, "shards_computed": 5}
    assert {s: v["rows"] for s, v in summary.splits.items()} == ROWS
    assert {s: v["shards_computed"] for s, v in summary.splits.items()} == SHARDS
    doc = json.loads((image_store / "features" / cfg.key / "config.json").read_text())
    assert doc["key"] == cfg.key and doc["config"] == config_dict(cfg) and doc["hog_dim"] == 8100
    store = Store(image_store)
    assert cfg.key in store.features.keys()
    for split in ROWS:
        for shard in store.image_shards(split):
            out = store.features.dir(cfg.key, split) / shard.name
            t = pq.read_table(out)
            assert t.schema.equals(cfg.schema())
            assert t.column("image_id").equals(pq.read_table(shard, columns=["image_id"]).column(0))
            assert t.column("error").null_count == t.num_rows
            stats = json.loads(commit_path(out).read_text())
            assert stats["rows"] == t.num_rows and stats["errors"] == 0
            assert stats["source"] == shard_identity(shard)
    # the stored numbers are skimage's HOG of the decoded, resized, grayscale image
    shard = store.image_shards("validation")[0]
    images = pq.read_table(shard, columns=["jpeg"]).column(0).to_pylist()[:3]
    t = pq.read_table(store.features.dir(cfg.key, "validation") / shard.name).slice(0, 3)
    hogs = np.array(t.column("hog").to_pylist(), np.float32)
    hists = np.array(t.column("color_hist").to_pylist(), np.float32)
    for jpeg, h, c in zip(images, hogs, hists):
        gray = cv2.cvtColor(decode_resize(jpeg, 128), cv2.COLOR_RGB2GRAY)
        np.testing.assert_allclose(h, hog(gray, 9, (8, 8), (2, 2), "L2-Hys"), atol=1e-4)
        assert c.sum() == pytest.approx(1.0, abs=1e-5)


def test_second_run_decodes_nothing(image_store):
    run(image_store)
    summary, work = run(image_store)
    assert work == {"images_decoded": 0, "shards_computed": 0}
    assert summary.ran == 0 and summary.reused == 5
    assert (summary.ok + summary.failed) == 72 and summary.details["images_computed"] == 0


def test_changed_config_writes_a_new_key_and_keeps_the_old(image_store):
    old_cfg, new_cfg = FeatureConfig(), FeatureConfig(bins=4, dtype="float16")
    run(image_store, old_cfg)
    before = snapshot(image_store, old_cfg.key)
    summary, work = run(image_store, new_cfg)
    assert summary.key == new_cfg.key != old_cfg.key and work["shards_computed"] == 5
    assert snapshot(image_store, old_cfg.key) == before
    assert sorted(Store(image_store).features.keys()) == sorted([old_cfg.key, new_cfg.key])
    t = pq.read_table(next((image_store / "features" / new_cfg.key / "test").glob("part-*.parquet")))
    assert t.schema.field("color_hist").type == pa.list_(pa.float16(), 64)
    assert run(image_store, old_cfg)[1]["shards_computed"] == 0  # the old key is still complete


def _add_image_shard(store_dir, split, src_no, dst_no, suffix):
    """A new committed image shard: a copy of shard ``src_no`` with new image ids."""
    d = store_dir / "images" / split
    t = pq.read_table(d / f"part-{src_no:05d}.parquet")
    ids = pa.array([f"{i}{suffix}" for i in t.column("image_id").to_pylist()])
    t = t.set_column(0, t.schema.field("image_id"), ids)
    path = d / f"part-{dst_no:05d}.parquet"
    write_parquet_atomic(t, path)
    commit_path(path).write_text(json.dumps({"ok": t.num_rows, "failed": 0}))
    return path, t.num_rows


def test_only_new_or_refetched_image_shards_are_computed(image_store):
    run(image_store)
    path, n = _add_image_shard(image_store, "train", 2, 3, "-new")
    summary, work = run(image_store)
    assert work == {"images_decoded": n, "shards_computed": 1}
    assert summary.splits["train"]["shards_computed"] == 1 and summary.splits["train"]["rows"] == 48 + n
    # a re-fetched image shard (new stats.json) invalidates its feature shard only
    marker = commit_path(image_store / "images" / "validation" / "part-00000.parquet")
    marker.write_text(json.dumps({"ok": 16, "failed": 0, "fetched": "again"}))
    summary, work = run(image_store, splits=["validation", "test"])
    assert work == {"images_decoded": 16, "shards_computed": 1}
    assert summary.splits["test"]["shards_reused"] == 1 and "train" not in summary.splits


def test_corrupt_jpeg_rows_get_null_features_and_an_error(image_store):
    path = image_store / "images" / "test" / "part-00000.parquet"
    t = pq.read_table(path)
    jpegs = t.column("jpeg").to_pylist()
    jpegs[1] = b"not a jpeg at all"
    jpegs[5] = jpegs[5][: len(jpegs[5]) // 2]  # truncated
    write_parquet_atomic(t.set_column(1, t.schema.field("jpeg"), pa.array(jpegs, pa.binary())), path)
    summary, _ = run(image_store, splits=["test"])
    assert summary.splits["test"]["errors"] == 2 and summary.splits["test"]["rows"] == 8
    out = pq.read_table(next((image_store / "features" / summary.key / "test").glob("part-*.parquet")))
    hog_ok = out.column("hog").is_valid().to_pylist()
    assert hog_ok == [i not in (1, 5) for i in range(8)]
    assert out.column("color_hist").is_valid().to_pylist() == hog_ok
    errors = out.column("error").to_pylist()
    assert errors[1] and errors[5] and "Premature end" in errors[5]
    assert all(e is None for i, e in enumerate(errors) if i not in (1, 5))


def test_damaged_feature_shard_is_named_and_rebuild_fixes_it(image_store):
    summary, _ = run(image_store, splits=["train"])
    out = image_store / "features" / summary.key / "train" / "part-00001.parquet"
    out.write_bytes(out.read_bytes()[:1000])  # truncated: no footer
    with pytest.raises(UserError, match=r"part-00001\.parquet: unreadable feature shard.*--rebuild"):
        run(image_store, splits=["train"])
    summary, work = run(image_store, splits=["train"], rebuild=True)
    assert work["shards_computed"] == 3 and summary.splits["train"]["rows"] == 48
    assert run(image_store, splits=["train"])[1]["shards_computed"] == 0
    # rows out of order: caught by comparing image_ids with the image shard
    t = pq.read_table(out)
    write_parquet_atomic(t.take(list(range(t.num_rows))[::-1]), out)
    with pytest.raises(UserError, match=r"part-00001\.parquet: damaged feature shard \(its image_ids"):
        run(image_store, splits=["train"])


def test_unknown_split_is_a_user_error(image_store):
    with pytest.raises(UserError, match="no committed image shards for split 'nope'"):
        run(image_store, splits=["nope"])


def test_two_worker_cluster_equals_inline(image_store, dask_cluster, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(image_store, other)
    run(image_store, splits=["train", "validation"])
    seen = []
    summary = compute_features(other, ["train", "validation"], scheduler=dask_cluster, progress=seen.append)
    assert summary.ran == 4 and (summary.ok + summary.failed) == 64
    assert seen and seen[-1].done == 64 and seen[-1].total == 64
    for split in ("train", "validation"):
        a = sorted((image_store / "features" / summary.key / split).glob("part-*.parquet"))
        b = sorted((other / "features" / summary.key / split).glob("part-*.parquet"))
        assert [p.name for p in a] == [p.name for p in b] and a
        for pa_, pb in zip(a, b):
            ta, tb = pq.read_table(pa_), pq.read_table(pb)
            assert ta.schema.equals(tb.schema)
            for name in ("image_id", "error"):
                assert ta.column(name).equals(tb.column(name))
            for name in ("hog", "color_hist"):  # float sums may differ in the last bit with memory alignment
                np.testing.assert_allclose(np.array(ta.column(name).to_pylist()),
                                           np.array(tb.column(name).to_pylist()), rtol=0, atol=1e-6)


def test_cli_features(image_store):
    runner = CliRunner()
    args = ["features", "--store", str(image_store), "--split", "validation", "--scheduler", "inline"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    key = FeatureConfig().key
    assert f"features {key}: 16 ok, 0 failed; ran 1, reused 0" in res.output
    res = runner.invoke(cli, args)
    assert "16 ok, 0 failed; ran 0, reused 1" in res.output
    res = runner.invoke(cli, args + ["--bins", "4", "--keep-background", "--dtype", "float16"])
    cfg = FeatureConfig(bins=4, ignore_background=False, dtype="float16")
    assert res.exit_code == 0 and f"features {cfg.key}: 16 ok, 0 failed; ran 1" in res.output
    res = runner.invoke(cli, args + ["--rebuild"])
    assert "16 ok, 0 failed; ran 1, reused 0" in res.output
    res = runner.invoke(cli, ["features", "--store", str(image_store), "--split", "nope"])
    assert res.exit_code == 1 and "Error:" in res.output and "no committed image shards" in res.output
    res = runner.invoke(cli, ["features", "--store", str(image_store), "--hog-size", "8"])
    assert res.exit_code == 2 and "'--hog-size': 8 is not in the range 16<=x<=512" in res.output


def test_a_failed_rebuild_keeps_the_old_shards_committed_and_readable(image_store):
    from wdr_pipe.cache import load_features

    run(image_store, splits=["validation"])
    before = load_features(image_store, "validation")
    files = snapshot(image_store, FeatureConfig().key)
    with pytest.raises(UserError, match="cannot reach dask scheduler"):
        compute_features(image_store, ["validation"], rebuild=True, scheduler="tcp://127.0.0.1:9")
    assert snapshot(image_store, FeatureConfig().key) == files  # nothing deleted, nothing uncommitted
    after = load_features(image_store, "validation")
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    summary, work = run(image_store, splits=["validation"], rebuild=True)  # a rebuild that runs replaces them
    assert work["shards_computed"] == 1 and not list((image_store / "features").rglob(".tmp-*"))


def test_a_stale_feature_shard_is_not_read_as_current(image_store):
    from wdr_pipe.cache import load_split

    run(image_store, splits=["validation"])
    marker = commit_path(image_store / "images" / "validation" / "part-00000.parquet")
    marker.write_text(marker.read_text().replace('"ok"', '"ok" ', 1))  # the image shard was fetched again
    with pytest.raises(UserError, match="computed from an earlier version of .*part-00000.parquet"):
        Store(image_store).features.shards(FeatureConfig().key, "validation")  # what training reads
    with pytest.raises(UserError, match="no committed feature shards for split 'validation'"):
        load_split(image_store, "validation")  # readers of finished shards skip it
    run(image_store, splits=["validation"])
    assert len(load_split(image_store, "validation")["image_id"]) == 16
