"""The run folder (``folder.py``), its checkpoints (``checkpoint.py``) and its evaluation files
(``evalfiles.py``): below scoring, embedding and training, which all read or write them."""
