"""Multi-label metrics (``scores.py``) and per-label decision thresholds (``thresholds.py``): numpy only,
no torch, nothing else of ``wdr`` (checked by ``tests/test_architecture.py``)."""
