"""``wdr-pipe features``: image shards -> HOG and colour-histogram shards (``stage.py``), computed by the
pure batch kernels ``hog.py`` and ``color.py``; the settings are ``configs.FeatureConfig``."""
from ..configs import FEATURE_CODE_VERSION, FeatureConfig
from .stage import compute_batch, compute_features, decode_resize

__all__ = ["FEATURE_CODE_VERSION", "FeatureConfig", "compute_batch", "compute_features", "decode_resize"]
