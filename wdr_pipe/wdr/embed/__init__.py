"""The backbone's vectors in the store: the ``Embedder`` (``embedder.py``), the embed stage (``stage.py``) and
similar-image search over them (``search.py``)."""
