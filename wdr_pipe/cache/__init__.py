"""The store: layout, schemas, config keys and atomic writes."""
from .keys import config_dict, config_key, write_config
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
]
