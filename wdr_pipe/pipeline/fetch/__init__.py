"""``wdr-pipe fetch``: index splits -> resized images in Parquet shards (``stage.py``), one dask task per
shard (``shard.py``), each image downloaded with bounds on everything (``download.py``)."""
from ..configs import DownloadConfig, FetchConfig, FetchOptions
from .stage import fetch

__all__ = ["DownloadConfig", "FetchConfig", "FetchOptions", "fetch"]
