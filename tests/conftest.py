"""Shared fixtures: generated data sets and stores built from them.

``synth_data`` draws a small FGVC5-style data set once per session.
``image_store`` is a store whose ``images/`` shards hold that data set
(train and validation, several shards each), written by the real fetch;
``wdr_store`` adds features and label statistics from the real stages.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from wdr_pipe.demo import synth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # stores.py: stores from the real stages

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


def build_store(root: Path, data_root: Path, records, *, size: int = 96, shard_size: int = 40,
                features: bool = True, stats: bool = True) -> Path:
    """A store written by the real stages (inline, no cluster): fetch over ``file://``
    URLs, then features and label statistics (``benchmarks/stores.py``)."""
    from stores import build_store as build

    return build(root, data_root, records, size=size, shard_size=shard_size, features=features, stats=stats)


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
