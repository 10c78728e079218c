"""From the store into PyTorch: each split's units (``layout.py``), their order (``sampling.py``), one reader
of units (``reader.py``), the wide input (``wide.py``), transforms and the resumable loader (``loader.py``)."""
