"""Image helpers shared by the data stages and the loader: one JPEG decoder and the
per-process settings for code that works on images with threads, and the fetch resize:
downloaded bytes -> a resized RGB JPEG (``process``), used by ``fetch`` for the store and by
``predict`` for a new photo.

Below both ``pipeline`` and ``wdr``: it imports neither.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import math
import warnings
from typing import Iterator, Optional, Protocol, Tuple

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps


def decode_rgb(data: Optional[bytes], min_size: int = 0) -> np.ndarray:
    """Stored JPEG bytes -> (H, W, 3) uint8 RGB, for the stages that read the store.

    libjpeg-turbo decodes at the smallest DCT scale whose sides are still
    >= ``min_size`` (0: full size); Pillow takes what it refuses (e.g. CMYK).
    ``ValueError`` if the bytes are not a decodable image.
    """
    if not data:
        raise ValueError("no image bytes")
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_size, min_width=min_size)
    except ValueError as e:
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))
        except Exception:
            raise ValueError(f"undecodable image ({e})") from None


@functools.lru_cache(maxsize=None)
def _tune_malloc() -> None:
    """dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins
    glibc's mmap threshold at 128 KiB: every decoded image and batch array then comes
    from fresh zeroed pages. Raising both thresholds cut the CPU per image of features
    from 1.3 to 0.8 ms and the system time of fetch's first 1,000 images from 1.2-1.6
    to 0.6 ms each. A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks under 32 MiB come from the heap
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MiB of free heap
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def opencv_threads(n: int = 1) -> Iterator[None]:
    """OpenCV's thread count set to ``n`` inside the block, the caller's restored after."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


@contextlib.contextmanager
def image_task() -> Iterator[None]:
    """Settings for the body of a shard task that works on images with threads.

    OpenCV gets one thread while the task runs (its own pool would oversubscribe
    the cores our processes and threads already use), and glibc's allocator is
    tuned once per process (``_tune_malloc``).
    """
    _tune_malloc()
    with opencv_threads(1):
        yield


# -- the fetch resize --------------------------------------------------------------
# Bytes of a downloaded image -> a resized RGB JPEG, fast and safe.
#
# ``process(data, spec)`` returns ``(jpeg_bytes, (width, height), (src_w, src_h))``
# or raises :class:`ImageRejected` with a status and reason; ``spec`` is the
# data stages' ``FetchConfig`` (size, resize_mode, quality, min_size, max_pixels).
# The fast path is a JPEG decoded by libjpeg-turbo (simplejpeg) straight at a
# reduced scale (DCT domain, 1/2) no smaller than the target, then one
# high-quality resize. Anything else (PNG, WebP, CMYK JPEG, ...) goes through
# Pillow with ``draft``. Before any pixel is decoded the header's size is checked
# against ``max_pixels`` (decompression bombs); EXIF orientation is applied;
# palette, alpha, grayscale and CMYK images become RGB (alpha composited on white).

HEADROOM = 1.3  # Pillow path: JPEG draft at least this much larger than the target
FAST_MAX = 1.35  # shrinks up to this factor use blur + cubic, larger ones Pillow's bicubic
# EXIF orientation -> numpy ops on an (H, W, 3) array, as Pillow's exif_transpose does them
_ORIENT = {
    2: lambda a: a[:, ::-1],                          # mirror left-right
    3: lambda a: a[::-1, ::-1],                       # rotate 180
    4: lambda a: a[::-1],                             # mirror top-bottom
    5: lambda a: a.transpose(1, 0, 2),                # transpose
    6: lambda a: np.rot90(a, -1),                     # rotate 90 clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],    # transverse
    8: lambda a: np.rot90(a, 1),                      # rotate 90 counter-clockwise
}


class ResizeSpec(Protocol):
    """What the resize reads of the data stages' ``FetchConfig`` (the store's image settings)."""

    size: int
    resize_mode: str
    quality: int
    min_size: int
    max_pixels: int


class ImageRejected(Exception):
    """An image we will not store; ``status`` is one of the fetch failure statuses."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


def target_size(w: int, h: int, size: int, mode: str) -> Tuple[int, int]:
    """Size the image is resized to before any crop or pad."""
    if mode in ("shorter", "center_crop"):
        scale = size / min(w, h)
    elif mode in ("longer", "pad"):
        scale = size / max(w, h)
    else:
        raise ValueError(f"unknown resize mode {mode!r} (FetchConfig's resize_mode checks it)")
    return max(1, round(w * scale)), max(1, round(h * scale))


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_many_pixels", str(e)) from e
    except Exception as e:
        head = data[:32].lstrip().lower()
        kind = "an HTML page" if head.startswith((b"<!doctype", b"<html")) else f"{len(data)} bytes"
        raise ImageRejected("not_image", f"not a decodable image ({kind})") from e


# what a person can do about an image that was refused, by status
ADVICE = {"not_image": "pass a photo (JPEG, PNG, WebP, ...)", "too_many_pixels": "pass a smaller image",
          "too_small": "pass a larger photo", "decode_error": "the file is damaged; pass another photo"}


def check_image(data: bytes, max_pixels: int) -> Tuple[int, int]:
    """The (width, height) an image file's header gives, before any pixel is decoded (and before any model
    is loaded for it); ``ImageRejected`` for bytes that are not an image and for more than ``max_pixels``."""
    w, h = _open(data).size
    if w * h > max_pixels:
        raise ImageRejected("too_many_pixels", f"{w}x{h} pixels is over the limit of {max_pixels}")
    return w, h


def _check_size(w: int, h: int, spec: "ResizeSpec") -> None:
    if w * h > spec.max_pixels:
        raise ImageRejected("too_many_pixels", f"{w}x{h} pixels is over the limit of {spec.max_pixels}")
    if min(w, h) < spec.min_size:
        raise ImageRejected("too_small", f"{w}x{h} is under the minimum side of {spec.min_size}")


def _decode_fast(data: bytes, need_w: int, need_h: int) -> np.ndarray:
    """libjpeg-turbo decode at the smallest DCT scale that is still >= the needed size."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=need_w, min_height=need_h)


def _decode_pil(im: Image.Image, need_w: int, need_h: int) -> np.ndarray:
    """Pillow decode (with JPEG draft where possible) to an RGB array, alpha on white."""
    if im.format == "JPEG":
        im.draft("RGB", (need_w, need_h))
    im.load()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        im = bg
    elif im.mode == "I;16" or im.mode == "I":
        im = ImageOps.autocontrast(im.convert("I").point(lambda v: v / 256).convert("L"))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def _resize(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize to (w, h) with antialiasing.

    Enlarging: Lanczos. Shrinking by up to ``FAST_MAX`` (the usual case after a
    DCT-scaled decode, e.g. 400x500 -> 299x374): a Gaussian pre-blur with
    sigma = 0.5 * sqrt(r^2 - 1) then OpenCV's cubic, 0.4 ms. Larger shrinks:
    Pillow's antialiased bicubic, 1.5-2 ms. Both stay >= 40 dB PSNR against a
    full decode + Lanczos (tests/test_imaging.py).
    """
    if (arr.shape[1], arr.shape[0]) == (w, h):
        return arr
    if w > arr.shape[1]:
        return cv2.resize(arr, (w, h), interpolation=cv2.INTER_LANCZOS4)
    r = max(arr.shape[1] / w, arr.shape[0] / h)
    if r <= FAST_MAX:
        sigma = 0.5 * math.sqrt(r * r - 1)
        if sigma > 0.05:  # sigma <= 0.45 here, so a 3x3 kernel holds the whole Gaussian
            arr = cv2.GaussianBlur(arr, (3, 3), sigma)
        return cv2.resize(arr, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.BICUBIC))


def _dct_min_size(data: bytes, need_w: int, need_h: int) -> Tuple[int, int]:
    """Minimum size that makes libjpeg-turbo decode at full or half scale.

    Half scale whenever it stays at or above the target. Only those two: the
    other M/8 scales measured 30-38 dB against a full decode + Lanczos on some
    sizes (the odd ones and 1/4, 1/8 for small targets), these 40-48 dB.
    """
    full_h, full_w = simplejpeg.decode_jpeg_header(data)[:2]
    f = 2 if full_w / 2 >= need_w and full_h / 2 >= need_h else 1
    return math.ceil(full_w / f), math.ceil(full_h / f)


def _finish(arr: np.ndarray, spec: "ResizeSpec") -> np.ndarray:
    """Crop or pad to a square for the modes that ask for one."""
    s = spec.size
    h, w = arr.shape[:2]
    if spec.resize_mode == "center_crop":
        y, x = (h - s) // 2, (w - s) // 2
        return arr[y:y + s, x:x + s]
    if spec.resize_mode == "pad":
        out = np.full((s, s, 3), 255, np.uint8)
        y, x = (s - h) // 2, (s - w) // 2
        out[y:y + h, x:x + w] = arr
        return out
    return arr


def process(data: bytes, spec: "ResizeSpec") -> Tuple[bytes, Tuple[int, int], Tuple[int, int]]:
    """Decode, orient, convert and resize ``data``; returns (jpeg, (w, h), (src_w, src_h))."""
    arr, src = decode_resized(data, spec)
    jpeg = simplejpeg.encode_jpeg(arr, quality=spec.quality, colorspace="RGB", colorsubsampling="420")
    return jpeg, (arr.shape[1], arr.shape[0]), src


def decode_resized(data: bytes, spec: "ResizeSpec") -> Tuple[np.ndarray, Tuple[int, int]]:
    """The RGB uint8 pixels ``process`` encodes, and the upright source size."""
    im = _open(data)
    sw, sh = im.size  # stored size, before EXIF rotation
    _check_size(sw, sh, spec)
    orient = _orientation(im) if im.format == "JPEG" else 1
    rotated = orient in (5, 6, 7, 8)
    src_w, src_h = (sh, sw) if rotated else (sw, sh)
    tw, th = target_size(src_w, src_h, spec.size, spec.resize_mode)
    need_w, need_h = (th, tw) if rotated else (tw, th)  # in stored orientation
    try:
        arr = None
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            try:
                arr = _decode_fast(data, *_dct_min_size(data, need_w, need_h))
            except ValueError:
                arr = None  # let Pillow try (and give the precise error)
        if arr is None:
            if im.format != "JPEG":
                orient = 1  # Pillow applies EXIF for non-JPEG below
                im = ImageOps.exif_transpose(im) or im
            arr = _decode_pil(im, math.ceil(need_w * HEADROOM), math.ceil(need_h * HEADROOM))
    except ImageRejected:
        raise
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_many_pixels", str(e)) from e
    except Exception as e:
        raise ImageRejected("decode_error", f"corrupt or truncated image: {e}") from e
    if orient in _ORIENT:
        arr = _ORIENT[orient](arr)
    arr = _finish(_resize(np.ascontiguousarray(arr), tw, th), spec)
    return np.ascontiguousarray(arr), (src_w, src_h)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An HWC uint8 image with a [0, 1] map drawn over it (jet colour map): a Grad-CAM map as the report
    and the browse page show it."""
    import cv2

    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.uint8(np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255))
