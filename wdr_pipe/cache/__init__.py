"""The store: layout, schemas, config keys, commit markers, atomic writes and the read API.

The only code that knows where a store keeps what (``store.py``, ``derived.py``), when a shard
is done and current (``commit.py``) and how its tables look (``schema.py``). Readers:
``labels.py``, ``feature_arrays.py``, ``label_stats.py``, ``tables.py``, ``info.py``; writers go
through ``atomic.py`` and ``jsonfile.py``.
"""
from .commit import commit, commit_path, is_current, read_commit, shard_identity
from .derived import Derived, DerivedShard
from .feature_arrays import feature_config, fixed_matrix, load_features, load_split
from .info import info_lines, store_info
from .jsonfile import read_json, write_json
from .keys import config_dict, config_key, write_config
from .label_stats import cooccurrence_matrix, label_counts, label_embeddings, label_weights, sample_weights
from .labels import label_columns, label_space, load_labels, multi_hot, multi_hot_positions
from .resultfile import read_result, result_path, write_result
from .schema import SCHEMA_VERSION
from .store import (LABEL_STATS_TABLES, Store, StoreLike, as_store, failures_path, is_store, open_store,
                    read_columns, shard_name)
from .tables import failures_by_status, fetch_counts, fetch_settings, has_labels, image_rows, index_ids, label_map

__all__ = [
    "Derived", "DerivedShard", "LABEL_STATS_TABLES", "SCHEMA_VERSION", "Store", "StoreLike", "as_store", "commit",
    "commit_path", "config_dict", "config_key", "cooccurrence_matrix", "failures_by_status", "failures_path",
    "feature_config", "fetch_counts", "fetch_settings", "fixed_matrix", "has_labels", "image_rows", "index_ids",
    "info_lines", "is_current", "is_store", "label_columns", "label_counts", "label_embeddings", "label_map", "label_space",
    "label_weights", "load_features", "load_labels", "load_split", "multi_hot", "multi_hot_positions", "open_store",
    "read_columns", "read_commit", "read_json", "read_result", "result_path", "sample_weights", "shard_identity",
    "shard_name", "store_info", "write_config", "write_json", "write_result",
]
