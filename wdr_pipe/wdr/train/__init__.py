"""Training: the settings (``config.py``), the loop (``loop.py``: ``train``, ``resume``) and what it is made
of (inputs, loss, optimizer, ``--init``), and the thresholds tuned after it (``retune.py``). Only the
command line and ``wdr-pipe run`` import this room."""
