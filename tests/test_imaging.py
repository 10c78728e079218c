"""Decode, orientation, colour modes and resize quality of fetched images."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from wdr_pipe.demo import synth
from wdr_pipe.imaging import ImageRejected, decode_resized, process, target_size
from wdr_pipe.pipeline.configs import FetchConfig


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of equal shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def photo(w=800, h=1000, seed=0) -> Image.Image:
    """Photographic content: a garment with lighting plus fine natural-looking texture."""
    g = synth.Garment("Dress", "Red", "Striped", "Long sleeves", "Female", "Blue")
    base = np.asarray(synth.draw_image(g, w, h, seed), np.float32)
    rng = np.random.default_rng(seed)
    grain = np.asarray(Image.fromarray(rng.normal(128, 40, (h // 4, w // 4)).clip(0, 255).astype(np.uint8))
                       .resize((w, h), Image.BICUBIC), np.float32) - 128
    return Image.fromarray(np.clip(base + 0.3 * grain[..., None], 0, 255).astype(np.uint8))


def to_jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


@pytest.mark.parametrize("source", [(800, 1000), (1000, 640), (600, 900), (1200, 1600)])
@pytest.mark.parametrize("size", [320, 299, 224, 160, 96])
def test_dct_downscale_matches_full_decode_lanczos(size, source):
    data = to_jpeg(photo(*source))
    pixels, src = decode_resized(data, FetchConfig(size=size))
    h, w = pixels.shape[:2]
    assert src == source and min(w, h) == size
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.LANCZOS))
    assert psnr(pixels, ref) >= 40


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    im = photo(400, 300, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = to_jpeg(im, exif=exif.tobytes())
    pixels, (sw, sh) = decode_resized(data, FetchConfig(size=120))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert (sw, sh) == upright.size
    ref = np.asarray(upright.resize(pixels.shape[1::-1], Image.LANCZOS))
    assert psnr(pixels, ref) >= 32
    if orientation != 1:  # and the unrotated pixels would not pass
        plain, _ = decode_resized(to_jpeg(im), FetchConfig(size=120))
        assert plain.shape != pixels.shape or psnr(plain, ref) < 25


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_colour_modes_become_rgb_with_alpha_on_white(mode, fmt):
    if fmt == "JPEG" and mode in ("P", "RGBA", "LA"):
        pytest.skip("JPEG has no palette or alpha")
    if fmt == "PNG" and mode == "CMYK":
        pytest.skip("PNG has no CMYK")
    if fmt == "WEBP" and mode in ("P", "CMYK", "LA", "L"):
        pytest.skip("WebP stores RGB(A) only")
    im = photo(200, 240).convert(mode)
    if "A" in mode:  # a transparent left half must come out white
        alpha = np.full((240, 200), 255, np.uint8)
        alpha[:, :100] = 0
        im.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 95} if fmt != "PNG" else {}))
    jpeg, (w, h), _ = process(buf.getvalue(), FetchConfig(size=100, quality=100))
    out = decode(jpeg)
    assert out.shape == (h, w, 3) and min(w, h) == 100
    if "A" in mode:
        assert out[:, :40].min() >= 245
        assert out[:, 60:].mean() < 240


@pytest.mark.parametrize("mode,expect", [("shorter", (160, 200)), ("longer", (128, 160)),
                                         ("center_crop", (160, 160)), ("pad", (160, 160))])
def test_resize_modes(mode, expect):
    jpeg, (w, h), _ = process(to_jpeg(photo(400, 500)), FetchConfig(size=160, resize_mode=mode))
    assert (w, h) == expect and decode(jpeg).shape[:2] == (h, w)
    if mode == "pad":  # the sides of a tall image are padded with white
        assert decode(jpeg)[:, :10].min() >= 245


def test_target_size_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown resize mode"):
        target_size(10, 10, 5, "stretch")


def test_rejections_name_their_status():
    small = to_jpeg(photo(20, 20))
    with pytest.raises(ImageRejected) as e:
        process(small, FetchConfig(min_size=32))
    assert e.value.status == "too_small"
    with pytest.raises(ImageRejected) as e:
        process(to_jpeg(photo(400, 500)), FetchConfig(max_pixels=100_000))
    assert e.value.status == "too_many_pixels"
    with pytest.raises(ImageRejected) as e:
        process(b"<!DOCTYPE html><html>nope</html>", FetchConfig())
    assert e.value.status == "not_image" and "HTML" in str(e.value)
    with pytest.raises(ImageRejected) as e:
        data = to_jpeg(photo(400, 500))
        process(data[: len(data) // 2], FetchConfig())
    assert e.value.status == "decode_error"
