"""The store's readers as a library (wdr_pipe.cache): label space, labels, features, a split in three forms.

Feature shards are the real features stage's, over image shards the real fetch wrote
(``feature_store``, tests/cache/conftest.py); one image's stored bytes are damaged first, so every
split has a failed (null) row.
"""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from helpers import BROKEN
from wdr_pipe.cache import (Store, fixed_matrix, label_space, load_features, load_labels, load_split, open_store,
                            commit_path)
from wdr_pipe.cache.atomic import write_parquet_atomic
from wdr_pipe.cache.schema import LABEL_MAP
from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.features import FeatureConfig, compute_features

HALF = FeatureConfig(hog_size=32, bins=2, dtype="float16")  # hog 324: a second config beside feature_store's


def stage_rows(root, key, split):
    """{image_id: (hog, color_hist, error)} in shard order, as the features stage wrote them, read with pyarrow alone."""
    rows = {}
    for p in sorted((root / "features" / key / split).glob("part-*.parquet")):
        t = pq.read_table(p)
        rows.update((i, (h, c, e)) for i, h, c, e in zip(*(t.column(n).to_pylist()
                                                            for n in ("image_id", "hog", "color_hist", "error"))))
    return rows


def _records(synth_data, split):
    return [r for r in synth_data[1] if r.split == split]


def test_label_space_from_max_id_then_from_label_map(image_store, synth_data):
    top = max(max(r.labels) for r in synth_data[1] if r.split != "test")
    assert label_space(image_store).tolist() == list(range(1, top + 1))
    for p in (image_store / "index").iterdir():  # without an index: from the image shards
        p.unlink()
    assert label_space(image_store).tolist() == list(range(1, top + 1))
    lm = pa.table({"labelId": [30, 10, 20], "taskId": [1, 1, 2], "labelName": ["a", "b", "c"],
                   "taskName": ["x", "x", "y"]}, schema=LABEL_MAP)
    pq.write_table(lm, Store(image_store).label_map_path)
    assert label_space(image_store).tolist() == [10, 20, 30]
    with pytest.raises(UserError, match="label id .* not in the label space"):
        load_labels(image_store, "train")


def test_load_labels_matches_the_data_set(image_store, synth_data):
    ids, y = load_labels(image_store, "validation")
    space = label_space(image_store)
    recs = _records(synth_data, "validation")
    assert ids.tolist() == [r.image_id for r in recs] and y.dtype == np.uint8
    assert y.shape == (len(recs), len(space))
    for r, row in zip(recs, y):
        assert space[np.flatnonzero(row)].tolist() == sorted(r.labels)
    with pytest.raises(UserError, match="no labels"):
        load_labels(image_store, "test")
    with pytest.raises(UserError, match="no committed image shards for split 'nope'"):
        load_labels(image_store, "nope")


def test_load_features_drops_or_keeps_failed_rows(feature_store):
    root, key = feature_store
    wrote = stage_rows(root, key, "train")
    assert list(wrote) == [str(i) for i in range(1, 49)]
    hog3, hist3, error3 = wrote[BROKEN]
    assert hog3 is None and hist3 is None and error3  # the stage's null row, with its reason
    assert all(e is None for i, (_, _, e) in wrote.items() if i != BROKEN)
    ids, hog, hist = load_features(root, "train")
    assert ids.tolist() == [i for i in wrote if i != BROKEN]
    assert hog.shape == (47, 36) and hist.shape == (47, 8) and hog.dtype == hist.dtype == np.float32
    assert np.array_equal(hog, np.array([wrote[i][0] for i in ids], np.float32))
    assert np.array_equal(hist, np.array([wrote[i][1] for i in ids], np.float32))
    assert len(np.unique(hog, axis=0)) == 47  # real numbers: no two images alike
    ids2, hog2, hist2 = load_features(open_store(root), "train", key=key, drop_failed=False)
    assert ids2.tolist() == list(wrote)
    j = ids2.tolist().index(BROKEN)
    assert np.isnan(hog2[j]).all() and np.isnan(hist2[j]).all()
    assert np.array_equal(np.delete(hog2, j, axis=0), hog) and np.array_equal(np.delete(hist2, j, axis=0), hist)


def test_fixed_matrix_copies_chunks_offsets_and_null_rows(feature_store):
    root, key = feature_store
    shards = sorted((root / "features" / key / "train").glob("part-*.parquet"))
    col = pa.concat_tables([pq.read_table(p) for p in shards]).column("hog").slice(1)  # the first chunk has an offset
    assert col.num_chunks >= len(shards) == 3 and col.null_count == 1
    out = np.full((2 + 47 + 3, 36), -7.0, np.float32)
    fixed_matrix(col, out, 2)
    want = np.array([[np.nan] * 36 if v is None else v for v in col.to_pylist()], np.float32)
    assert np.array_equal(out[2:49], want, equal_nan=True)
    assert (out[:2] == -7).all() and (out[49:] == -7).all()  # nothing written outside its rows


def test_feature_key_choice(feature_store):
    root, key = feature_store
    other = compute_features(root, cfg=HALF, scheduler="inline").key
    assert other == HALF.key != key
    with pytest.raises(UserError, match=f"several feature configs .*{min(key, other)}"):
        load_features(root, "train")
    with pytest.raises(UserError, match="no feature config 'zzz'"):
        load_features(root, "train", key="zzz")
    ids, hog, hist = load_features(root, "train", key=other)
    assert hog.shape == (47, 324) and hist.shape == (47, 8) and hog.dtype == hist.dtype == np.float16
    wrote = stage_rows(root, other, "train")
    assert ids.tolist() == [i for i in wrote if i != BROKEN] and wrote[BROKEN][0] is None
    assert np.array_equal(hog, np.array([wrote[i][0] for i in ids], np.float16))
    assert np.array_equal(hist, np.array([wrote[i][1] for i in ids], np.float16))
    ids1, hog1, _ = load_features(root, "train", key=key)  # the first config, side by side, as it was
    assert ids1.tolist() == ids.tolist() and hog1.dtype == np.float32 and hog1.shape == (47, 36)


def test_load_split_in_three_forms(feature_store, synth_data):
    root, _ = feature_store
    d = load_split(root, "train")
    ids, y = load_labels(root, "train")
    keep = ids != BROKEN
    assert d["image_id"].tolist() == ids[keep].tolist()
    _, hog, hist = load_features(root, "train")
    assert np.array_equal(d["labels"], y[keep])
    assert np.array_equal(d["hog"], hog) and np.array_equal(d["color_hist"], hist)
    df = load_split(root, "train", as_="pandas")
    assert df.columns.tolist() == ["image_id", "hog", "color_hist", "labels"] and len(df) == 47
    by_id = {r.image_id: sorted(r.labels) for r in _records(synth_data, "train")}
    assert all(by_id[i] == lab.tolist() for i, lab in zip(df.image_id, df.labels))
    t = load_split(root, "train", as_="torch")
    assert t["hog"].shape == (47, 36) and t["labels"].shape == y[keep].shape
    assert np.array_equal(t["labels"].numpy(), y[keep]) and t["image_id"] == d["image_id"].tolist()
    test = load_split(root, "test")
    assert test["labels"] is None
    assert test["image_id"].tolist() == [str(i) for i in range(1, 9) if i != 3]  # it failed there too
    with pytest.raises(UserError, match="as_="):
        load_split(root, "train", as_="arrow")


def test_load_split_reads_only_shards_committed_on_both_sides(feature_store):
    root, key = feature_store
    store = Store(root)
    commit_path(store.features.dir(key, "train") / "part-00001.parquet").unlink()  # features not finished
    d = load_split(root, "train")
    assert d["image_id"].tolist() == [str(i) for i in range(1, 21) if i != 3] + [str(i) for i in range(41, 49)]
    # a feature shard that does not match its image shard is refused with the fix
    t = pq.read_table(store.features.dir(key, "train") / "part-00002.parquet")
    write_parquet_atomic(t.slice(1), store.features.dir(key, "train") / "part-00002.parquet")
    with pytest.raises(UserError, match="not row-aligned.*rerun 'wdr-pipe features --store .* --split train --rebuild'"):
        load_split(root, "train")


def test_no_features_names_the_command(image_store):
    with pytest.raises(UserError, match="wdr-pipe features"):
        load_split(image_store, "train")


def test_incompatible_store_refused_by_api_and_cli(image_store):
    (image_store / "_store.json").write_text('{"schema_version": 99}')
    with pytest.raises(UserError, match="schema version 99"):
        load_labels(image_store, "train")
    res = CliRunner().invoke(cli, ["store", "info", str(image_store)])
    assert res.exit_code == 1 and "schema version 99" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["store", "info", str(image_store.parent)])
    assert res.exit_code == 1 and "not a wdr-pipe store" in res.output
