"""The inputs of ``wdr-pipe fetch``: index files and folders read (``read.py``: FGVC5 JSON, CSV, TSV,
Parquet in ``formats.py``, the Clothing Attributes folder in ``clothing.py``, URLs checked in
``urls.py``) and written into the store (``ingest.py``)."""
from .ingest import holdout_mask, ingest
from .read import read_index, read_label_map

__all__ = ["holdout_mask", "ingest", "read_index", "read_label_map"]
