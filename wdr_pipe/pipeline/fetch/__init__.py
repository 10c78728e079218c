"""``wdr-pipe fetch``: index splits -> resized images in Parquet shards (``stage.py``), one dask task per
shard (``shard.py``), each image downloaded with bounds on everything (``download.py``).

``fetch`` is imported on first use, so a dask worker that runs ``shard.fetch_shard`` does not load
the stage and the index readers."""
from ..configs import DownloadConfig, FetchConfig, FetchOptions

__all__ = ["DownloadConfig", "FetchConfig", "FetchOptions", "fetch"]


def __getattr__(name):
    if name == "fetch":
        from .stage import fetch

        return fetch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
