"""The store: layout, schemas, config keys and atomic writes."""
from .keys import config_dict, config_key, write_config
from .read import (cooccurrence_matrix, feature_config, label_counts, label_embeddings, label_space, label_weights,
                   load_features, load_labels, load_split, sample_weights, store_info)
from .schema import SCHEMA_VERSION
from .store import Store, failures_path, open_store, shard_name, stats_path

__all__ = [
    "SCHEMA_VERSION",
    "Store",
    "config_dict",
    "config_key",
    "failures_path",
    "open_store",
    "shard_name",
    "stats_path",
    "write_config",
    # reading (read.py)
    "cooccurrence_matrix",
    "feature_config",
    "label_counts",
    "label_embeddings",
    "label_space",
    "label_weights",
    "load_features",
    "load_labels",
    "load_split",
    "sample_weights",
    "store_info",
]
