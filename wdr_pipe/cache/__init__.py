"""The store: layout, schemas, config keys, atomic writes and the read API.

The only code that knows where a store keeps what (``store.py``) and how its
tables look (``schema.py``). Readers: ``labels.py``, ``features.py``,
``label_stats.py``, ``info.py``, ``tables.py``; writers go through ``atomic.py``.
"""
from .features import feature_config, fixed_matrix, load_features, load_split
from .info import store_info
from .jsonfile import read_json, write_json
from .keys import config_dict, config_key, write_config
from .label_stats import cooccurrence_matrix, label_counts, label_embeddings, label_weights, sample_weights
from .labels import label_columns, label_space, load_labels, multi_hot, multi_hot_positions
from .result import read_result, write_result
from .schema import SCHEMA_VERSION
from .tables import failures_by_status, fetch_settings, has_labels, image_rows, index_ids, label_map
from .store import (STATS_TABLES, Store, StoreLike, as_store, commit_path, failures_path, open_store, read_columns,
                    read_commit, shard_identity, shard_name)

__all__ = [
    "SCHEMA_VERSION", "STATS_TABLES", "Store", "StoreLike", "as_store", "commit_path", "config_dict", "config_key",
    "cooccurrence_matrix", "failures_by_status", "failures_path", "fetch_settings", "has_labels", "image_rows",
    "index_ids", "label_map", "feature_config", "fixed_matrix", "label_columns", "label_counts",
    "label_embeddings", "label_space", "label_weights", "load_features", "load_labels", "load_split", "multi_hot",
    "multi_hot_positions", "open_store", "read_columns", "read_commit", "read_json", "read_result", "sample_weights",
    "shard_identity", "shard_name", "store_info", "write_config", "write_json", "write_result",
]
