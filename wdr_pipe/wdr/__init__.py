"""The Wide, Deep and Recurrent model's data side: the streaming loader and its transforms."""
from .data import Loader, StoreDataset, make_loader
from .transforms import DataConfig, EvalTransform, Normalize, TrainTransform, data_config, decode_jpeg, make_transform

__all__ = ["DataConfig", "EvalTransform", "Loader", "Normalize", "StoreDataset", "TrainTransform", "data_config",
           "decode_jpeg", "make_loader", "make_transform"]
