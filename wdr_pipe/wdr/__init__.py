"""The Wide, Deep and Recurrent model: the streaming loader, the model, training, thresholds and metrics.

Names are imported on first use, so ``wdr_pipe.wdr.metrics`` or ``thresholds``
do not pull in torch.
"""
import importlib

_WHERE = {
    "Loader": "data", "StoreDataset": "data", "make_loader": "data",
    "DataConfig": "transforms", "EvalTransform": "transforms", "Normalize": "transforms",
    "TrainTransform": "transforms", "data_config": "transforms", "make_transform": "transforms",
    "ModelConfig": "model", "WDRModel": "model", "build_model": "model", "create_backbone": "backbone",
    "retune_thresholds": "retune",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
