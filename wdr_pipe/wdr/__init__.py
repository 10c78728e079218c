"""The Wide, Deep and Recurrent model side: a room per job (see docs/architecture.md).

``metrics/`` (numpy only), ``data/`` (the streaming loader), ``model/``, ``dist.py`` (processes and the
device), ``runs/`` (the run folder), ``score/``, ``embed/`` and ``train/``. Names are imported on first use,
so ``wdr_pipe.wdr.metrics`` does not pull in torch.
"""
import importlib

_WHERE = {
    "Loader": "data.loader", "StoreDataset": "data.loader", "make_loader": "data.loader",
    "DataConfig": "data.transforms", "EvalTransform": "data.transforms", "Normalize": "data.transforms",
    "TrainTransform": "data.transforms", "data_config": "data.transforms", "make_transform": "data.transforms",
    "ModelConfig": "model.network", "WDRModel": "model.network", "build_model": "model.network",
    "create_backbone": "model.backbone", "retune_thresholds": "train.retune",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
