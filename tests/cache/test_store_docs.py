"""docs/store.md: every table and column is documented, and every Python snippet runs on a real store."""
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import REPO, add_failures, break_image
from wdr_pipe.cache import LABEL_STATS_TABLES, Store, cooccurrence_matrix, label_counts, load_features, load_labels, sample_weights
from wdr_pipe.cache.atomic import write_parquet_atomic
from wdr_pipe.cache.schema import (COOCCURRENCE, FAILURES, IMAGES, INDEX, LABEL_COUNTS, LABEL_MAP, LABEL_WEIGHTS,
                                   SAMPLE_WEIGHTS, SEARCH_IDS, label_embeddings_schema, features_schema,
                                   image_embeddings_schema)
from wdr_pipe.pipeline import stats
from wdr_pipe.demo import synth
from wdr_pipe.pipeline.features import FeatureConfig, compute_features
from wdr_pipe.wdr.embed.stage import EmbedSpec, compute_embeddings
from wdr_pipe.wdr.embed.search import similar

DOC = REPO / "docs" / "store.md"
STORE_LINE = 'STORE = Path("store")'


def snippets():
    """{name: code} of the ```python blocks, named by their first line ``# example: NAME``."""
    out = {}
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S):
        m = re.match(r"# example: ([\w-]+)\n", block)
        assert m, f"a python block in {DOC.name} does not start with '# example: NAME':\n{block[:80]}"
        out[m.group(1)] = block
    return out


@pytest.fixture(scope="module")
def doc_store(_image_store_template, tmp_path_factory):
    """A copy of the test store plus a label map, real feature shards (one image that does
    not decode), a failures file and label stats (shared by the snippets, which only read)."""
    image_store = tmp_path_factory.mktemp("docs") / "store"
    shutil.copytree(_image_store_template, image_store)
    store = Store(image_store)
    lm = pa.Table.from_pylist([dict(zip(LABEL_MAP.names, row)) for row in synth.label_map()], schema=LABEL_MAP)
    write_parquet_atomic(lm, store.label_map_path)
    break_image(image_store, "3", splits=["train"])
    compute_features(store, cfg=FeatureConfig(hog_size=32, bins=4), scheduler="inline")
    add_failures(image_store)
    stats.compute_stats(store, ["train"], cfg=stats.StatsConfig(epochs=100))
    compute_embeddings(store, EmbedSpec(pretrained=True, image_size=32), ["train"], device="cpu")
    return store


def run(name, store):
    code = snippets()
    setup = code["setup"]
    assert setup.count(STORE_LINE) == 1
    ns = {}
    exec(compile(setup.replace(STORE_LINE, f"STORE = Path({str(store.root)!r})"), "setup", "exec"), ns)
    if name != "setup":
        assert "STORE = " not in code[name]
        exec(compile(code[name], name, "exec"), ns)
    return ns["result"]


def test_every_table_and_column_is_documented():
    text = DOC.read_text(encoding="utf-8")
    tables = [INDEX, IMAGES, FAILURES, LABEL_MAP, features_schema(3, 2), LABEL_COUNTS, COOCCURRENCE,
              LABEL_WEIGHTS, SAMPLE_WEIGHTS, label_embeddings_schema(4), image_embeddings_schema(4), SEARCH_IDS]
    missing = [f.name for t in tables for f in t if f"`{f.name}`" not in text]
    assert not missing, f"columns not in docs/store.md: {missing}"
    for name in ["_store.json", "label_map.parquet", "failures.parquet", "stats.json", "config.json",
                 "vectors.npy", "ids.parquet", "manifest.json", *[f"{n}.parquet" for n in LABEL_STATS_TABLES]]:
        assert name in text


def test_every_snippet_is_checked():
    assert set(snippets()) == set(CHECKS) | {"setup"}


def check_setup(result, store, synth_data):
    assert result == [str(p) for p in store.image_shards("train")]


def check_pandas_labels(result, store, synth_data):
    names = {lid: name for lid, _, name, _ in synth.label_map()}
    want = {r.image_id: sorted(names[x] for x in r.labels) for r in synth_data[1] if r.split == "train"}
    assert result.to_dict() == want


def check_pyarrow_hog(result, store, synth_data):
    assert np.array_equal(result, load_features(store, "train")[1])


def check_pyarrow_multi_hot(result, store, synth_data):
    assert np.array_equal(result, load_labels(store, "train")[1])


def _counts(store):
    labels, counts = label_counts(store, "train")
    return {int(a): int(n) for a, n in zip(labels, counts) if n}


def check_dask_label_counts(result, store, synth_data):
    assert {int(k): int(v) for k, v in result.items()} == _counts(store)


def check_duckdb_label_counts(result, store, synth_data):
    assert dict(zip(result["label"].tolist(), result["images"].tolist())) == _counts(store)


def check_duckdb_failures(result, store, synth_data):
    assert result == [("http_404", 2), ("timeout", 1)]


def check_polars_join(result, store, synth_data):
    assert result.columns == ["image_id", "color_hist", "labels", "weight"] and result.height == 47
    ids, weights = sample_weights(store, "train")
    by_id = dict(zip(ids.tolist(), weights.tolist()))
    assert result["weight"].to_list() == [by_id[i] for i in result["image_id"].to_list()]
    assert np.array_equal(result["color_hist"].to_numpy(), load_features(store, "train")[2])


def check_pandas_cooccurrence(result, store, synth_data):
    assert np.array_equal(result, cooccurrence_matrix(store, "train"))


def check_numpy_nearest_images(result, store, synth_data):
    first = pq.read_table(store.image_shards("train")[0], columns=["image_id"]).column(0)[0].as_py()
    assert list(result) == [r["image_id"] for r in similar(store, first, k=5).results]


CHECKS = {name[len("check_"):].replace("_", "-"): fn for name, fn in dict(globals()).items()
          if name.startswith("check_") and name != "check_setup"}


@pytest.mark.parametrize("name", ["setup", *sorted(CHECKS)])
def test_snippet(name, doc_store, synth_data):
    result = run(name, doc_store)
    (check_setup if name == "setup" else CHECKS[name])(result, doc_store, synth_data)
