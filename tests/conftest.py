"""Shared fixtures: generated data sets and stores built from them.

``synth_data`` draws a small FGVC5-style data set once per session.
``image_store`` is a store whose ``images/`` shards hold that data set
(train and validation, several shards each), written by the real fetch;
``wdr_store`` adds features and label statistics from the real stages.
Builders and helpers that are not fixtures are in ``helpers.py``.
"""
from __future__ import annotations

import shutil

import pytest

from helpers import HOSTILE_IDS, HOSTILE_LABELS, build_store
from wdr_pipe.demo import synth

SPLITS = {"train": 48, "validation": 16, "test": 8}
# Sides of the generated images: no larger than the tests need. The largest store size they fetch
# is 160 px, so every image is a downscale; at 160 the fetch decodes at full scale (a shorter side
# under 320), at 96 at half scale (DCT), so the fixture stores take both paths. The demo keeps 600-1000.
SIDES = (200, 320)


@pytest.fixture(scope="session")
def dask_cluster():
    """One 2-worker dask ``LocalCluster`` for the whole test run; tests pass its address as
    ``scheduler=`` (a stage on an existing cluster). The demo test starts a cluster of its own."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """(folder, records) of a small generated data set; images are 200-320 px JPEGs (``SIDES``)."""
    root = tmp_path_factory.mktemp("synth")
    records = synth.make_dataset(root, SPLITS, seed=0, size_range=SIDES)
    return root, records


@pytest.fixture(scope="session")
def _image_store_template(synth_data, tmp_path_factory):
    data_root, records = synth_data
    return build_store(tmp_path_factory.mktemp("store-template") / "store", data_root, records, size=160,
                       shard_size=20, features=False, stats=False)


@pytest.fixture
def image_store(_image_store_template, tmp_path):
    """A fresh copy of a store with committed image shards for train/validation/test."""
    dst = tmp_path / "store"
    shutil.copytree(_image_store_template, dst)
    return dst


@pytest.fixture(scope="session")
def wdr_store(synth_data, tmp_path_factory):
    """A store with images, features and label statistics, built once by the real stages.
    Tests that write into a store copy it first (``copy_store``)."""
    data_root, records = synth_data
    return build_store(tmp_path_factory.mktemp("wdr") / "store", data_root, records)


@pytest.fixture
def copy_store(wdr_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(wdr_store, dst)
    return dst


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)``: a small tmpfs mounted under tmp_path, for full-disk tests (needs root;
    skipped where mounting is not allowed). Unmounted lazily, so a file still open cannot fail it."""
    import subprocess

    mounted = []

    def mount(size: str):
        mnt = tmp_path / f"tmpfs-{size}"
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="session")
def shared(synth_data, tmp_path_factory):
    """What users share, built once by the real stages: a store (the synthetic data set with a vendor's label
    map of ``HOSTILE_LABELS`` and test rows under ``HOSTILE_IDS``, label statistics, the run's embeddings with
    their search index), a finished run (``run``, evaluated with saliency maps and its report), a copy of it
    (``twin``) and a stacked ensemble of the two (``ensemble``). Tests copy what they change."""
    import csv
    import types

    from wdr_pipe.pipeline.configs import FetchConfig, FetchOptions, StatsConfig
    from wdr_pipe.pipeline.fetch import fetch
    from wdr_pipe.pipeline.stats import compute_stats
    from wdr_pipe.report import build_report
    from wdr_pipe.wdr.embed.search import build_index
    from wdr_pipe.wdr.embed.stage import EmbedSpec, compute_embeddings
    from wdr_pipe.wdr.score.ensemble import EnsembleConfig, make_ensemble
    from wdr_pipe.wdr.score.evaluate import EvalConfig, evaluate
    from wdr_pipe.wdr.train.config import TrainConfig
    from wdr_pipe.wdr.train.loop import train

    data_root, records = synth_data
    base = tmp_path_factory.mktemp("shared")
    with open(data_root / "label_map.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for r in rows[1:]:
        r[2] = HOSTILE_LABELS.get(int(r[0]), r[2])
    with open(base / "label_map.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    test = [r for r in records if r.split == "test"]
    odd = [synth.Record("test", i, r.labels, r.path) for i, r in zip(HOSTILE_IDS, test)]
    paths = synth.write_fgvc5_json(base, [*records, *odd], data_root.as_uri())
    store, runs = base / "store", base / "runs"
    fetch(store, [paths[s] for s in sorted(paths)], FetchConfig(size=96), FetchOptions(shard_size=40, threads=4),
          label_map=base / "label_map.csv", scheduler="inline")
    compute_stats(store, cfg=StatsConfig(epochs=50))
    run = runs / "run"
    train(TrainConfig(store=str(store), out=str(run), image_size=64, batch_size=16, loader_workers=0, epochs=2,
                      checkpoint_every=0, lr=1e-3, pretrained=True))
    evaluate(EvalConfig(store=str(store), run=str(run), saliency=2, loader_workers=0, batch_size=16),
             before_commit=lambda: build_report(run, "validation", store))
    shutil.copytree(run, runs / "twin")
    make_ensemble(EnsembleConfig(runs=(str(run), str(runs / "twin")), out=str(runs / "ensemble"), method="stack",
                                 store=str(store), folds=2, loader_workers=0, batch_size=16))
    key = compute_embeddings(store, EmbedSpec(run=str(run))).key
    build_index(store, key, "train")
    return types.SimpleNamespace(store=store, run=run, twin=runs / "twin", ensemble=runs / "ensemble", key=key,
                                 photo=data_root / test[0].path, data_root=data_root, base=base)
