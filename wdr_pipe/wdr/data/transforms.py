"""Decode and transforms for the loader: JPEG bytes -> uint8 HWC images of the training size.

- decoding is ``wdr_pipe.imaging.decode_rgb``: simplejpeg (libjpeg-turbo), the fastest decoder measured
  here for the store's ~320 px JPEGs (figures in docs/benchmarks.md, "Loader");
  Pillow's ``draft`` does not help at that size, since no DCT scale (1/2, 1/4,
  1/8) stays above a 224 px crop.
- ``TrainTransform``: random resized crop and horizontal flip on uint8 numpy
  with OpenCV (no colour jitter: colour is a label).
- ``EvalTransform``: resize the shorter side to ``floor(size / crop_pct)`` and
  centre crop, exactly as ``timm.data.create_transform(is_training=False)``
  does (Pillow, same filter), but resizing only the pixels that survive the crop.
- ``Normalize``: uint8 NCHW -> float, ``(x / 255 - mean) / std``, as a module
  to apply after the batch is on the device (uint8 batches are 4x cheaper to
  move between processes and to the GPU than float32 ones).

``data_config(model)`` reads input size, crop_pct, interpolation, mean and std
from ``timm.data.resolve_model_data_config``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image

from ...errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
_CV2_FILTERS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST,
                "lanczos": cv2.INTER_LANCZOS4, "box": cv2.INTER_AREA, "hamming": cv2.INTER_LINEAR}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the backbone expects: square input size, eval crop fraction, filter, mean and std."""

    size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.interpolation not in _PIL_FILTERS:
            raise UserError(f"interpolation {self.interpolation!r}: use one of {', '.join(_PIL_FILTERS)}")

    @classmethod
    def from_dict(cls, doc) -> "DataConfig":
        """The config as a JSON file holds it (a run's ``config.json``, an embedding key's): lists back to tuples."""
        return cls(size=int(doc["size"]), crop_pct=float(doc["crop_pct"]), interpolation=doc["interpolation"],
                   mean=tuple(float(x) for x in doc["mean"]), std=tuple(float(x) for x in doc["std"]))


def data_config(model=None, **overrides) -> DataConfig:
    """The ``DataConfig`` of a timm model (or of timm's defaults), with ``overrides`` applied."""
    fields = {}
    if model is not None:
        import timm.data

        cfg = timm.data.resolve_model_data_config(model)
        _, h, w = cfg["input_size"]
        if h != w:
            raise UserError(f"model input size {h}x{w}: only square input sizes are supported")
        interp = cfg.get("interpolation", "bicubic")
        fields = dict(size=int(h), crop_pct=float(cfg.get("crop_pct", 0.875)),
                      interpolation=interp if interp in _PIL_FILTERS else "bicubic",
                      mean=tuple(float(x) for x in cfg["mean"]), std=tuple(float(x) for x in cfg["std"]))
    fields.update(overrides)
    return DataConfig(**fields)


# -- train -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """Random resized crop (torchvision's sampling of the box) and horizontal flip, on uint8 HWC.

    The crop is resized with bilinear filtering, or area averaging when it
    shrinks by more than 2x (cv2's bilinear does not antialias).
    """

    size: int = 224
    scale: Tuple[float, float] = (0.25, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def box(self, height: int, width: int, rng: np.random.Generator) -> Tuple[int, int, int, int]:
        """(top, left, h, w) of the crop, as ``torchvision.transforms.RandomResizedCrop.get_params``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        top, left, h, w = self.box(img.shape[0], img.shape[1], rng)
        crop = img[top:top + h, left:left + w]
        shrink = max(h, w) > 2 * self.size
        out = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if rng.random() < self.hflip:
            out = cv2.flip(out, 1)
        return out


# -- eval ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side to ``floor(size / crop_pct)``, centre crop ``size``: timm's eval transform."""

    size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __call__(self, img: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        height, width = img.shape[:2]
        short = math.floor(self.size / self.crop_pct)
        # torchvision Resize(int): shorter side -> short, longer side -> int(short * long / short_side)
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        if top < 0 or left < 0:  # crop_pct > 1: resize whole, then pad as CenterCrop does
            full = np.asarray(Image.fromarray(img).resize((new_w, new_h), _PIL_FILTERS[self.interpolation]))
            out = np.zeros((self.size, self.size, 3), np.uint8)
            t, lf = max(0, -top), max(0, -left)
            src = full[max(0, top):max(0, top) + self.size - t, max(0, left):max(0, left) + self.size - lf]
            out[t:t + src.shape[0], lf:lf + src.shape[1]] = src
            return out
        sx, sy = new_w / width, new_h / height
        box = (left / sx, top / sy, (left + self.size) / sx, (top + self.size) / sy)
        out = Image.fromarray(img).resize((self.size, self.size), _PIL_FILTERS[self.interpolation], box=box)
        return np.asarray(out)


def make_transform(cfg: DataConfig, train: bool, scale: Tuple[float, float] = (0.25, 1.0), hflip: float = 0.5):
    """The train or eval transform for a backbone's ``DataConfig``."""
    if train:
        return TrainTransform(cfg.size, scale=tuple(scale), hflip=hflip)
    return EvalTransform(cfg.size, cfg.crop_pct, cfg.interpolation)


# -- normalise -------------------------------------------------------------------------
class Normalize(torch.nn.Module):
    """uint8 (N, 3, H, W) or (3, H, W) -> ``(x / 255 - mean) / std`` in ``dtype``; run it where the batch lands.

    The memory format of ``x`` is kept (the loader's batches are channels_last);
    ``channels_last=True`` makes sure of it for 4-d input. On the CPU a
    channels_last batch is done image by image with OpenCV, while it is in
    cache: about 4x faster than whole-batch tensor ops.

    >>> x = batch["image"].to(device, non_blocking=True)
    >>> x = normalize(x)          # normalize = loader.normalize.to(device)
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False):
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)
        self.dtype, self.channels_last = dtype, channels_last

    @classmethod
    def from_config(cls, cfg: DataConfig, **kw) -> "Normalize":
        return cls(cfg.mean, cfg.std, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
                and x.shape[1] == 3:
            y = self._cpu_channels_last(x)
        else:
            y = x.to(torch.float32).mul_(self.scale).add_(self.shift)  # in place: half the time of addcmul
        if self.channels_last and y.dim() == 4:
            y = y.contiguous(memory_format=torch.channels_last)
        return y.to(self.dtype)

    def _cpu_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        src = x.permute(0, 2, 3, 1).numpy()  # NHWC view, no copy
        dst = np.empty(src.shape, np.float32)  # numpy's allocation here is ~4x cheaper than torch.empty's
        m = torch.cat([torch.diag(self.scale.flatten()), self.shift.view(3, 1)], 1).cpu().numpy()
        for i in range(len(src)):  # per pixel: [r g b] -> diag(scale) @ [r g b] + shift
            cv2.transform(src[i].astype(np.float32), m, dst=dst[i])
        return torch.from_numpy(dst).permute(0, 3, 1, 2)


__all__ = ["DataConfig", "EvalTransform", "Normalize", "TrainTransform", "data_config",
           "make_transform"]
