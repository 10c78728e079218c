"""Fixtures of the store layer's tests: a store with the real features of every split."""
import shutil

import pytest

from helpers import SMALL_FEATURES, break_image
from wdr_pipe.pipeline.features import compute_features


@pytest.fixture(scope="session")
def _feature_template(_image_store_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("read") / "store"
    shutil.copytree(_image_store_template, root)
    break_image(root)
    compute_features(root, cfg=SMALL_FEATURES, scheduler="inline")
    return root


@pytest.fixture
def feature_store(_feature_template, tmp_path):
    """(a fresh copy of the shared image store with ``SMALL_FEATURES`` features of every split, its feature key);
    the stored bytes of image ``BROKEN`` are damaged in every split first (``break_image``)."""
    root = tmp_path / "store"
    shutil.copytree(_feature_template, root)
    return root, SMALL_FEATURES.key
