"""``wdr-pipe stats``: the label statistics of each labelled split (``stage.py``), from the pure numbers of
``numbers.py`` and the label vectors of ``glove.py``; the settings are ``configs.StatsConfig``."""
from ..configs import StatsConfig
from .glove import fit_glove
from .numbers import (cooccurrence, dense_columns, multi_hot_csr, per_image_weights, per_label_weights, pos_weights,
                      split_stats)
from .stage import compute_stats, inputs_digest

__all__ = ["StatsConfig", "compute_stats", "cooccurrence", "dense_columns", "fit_glove", "inputs_digest",
           "multi_hot_csr", "per_image_weights", "per_label_weights", "pos_weights", "split_stats"]
