"""The batch HOG equals skimage.feature.hog; the colour histogram equals np.histogramdd."""
import cv2
import numpy as np
import pytest
from skimage.feature import hog

from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.features.color import color_hist_batch
from wdr_pipe.pipeline.features import FeatureConfig, decode_resize
from wdr_pipe.pipeline.features.hog import hog_batch

PARAMS = [  # (size, orientations, cell, block, norm)
    (128, 9, 8, 2, "L2-Hys"),   # the default: 8100 dims
    (64, 4, 8, 2, "L2-Hys"),    # 45-degree bin edges: gradient angles land exactly on them
    (70, 8, 6, 3, "L1"),        # size not a multiple of the cell
    (43, 7, 5, 2, "L2"),        # bin width 180/7 is not a whole number
    (32, 12, 4, 1, "L1-sqrt"),
]


def _skimage(images, cfg):
    return np.stack([hog(im, cfg.orientations, (cfg.cell, cfg.cell), (cfg.block, cfg.block), cfg.block_norm)
                     for im in images])


def _random_images(rng, n, size, dtype):
    x = rng.integers(0, 256, (n, size, size)).astype(np.float64)
    x[0] = x[0, :1]                                           # constant columns: only vertical gradients
    x[1] = (np.add.outer(np.arange(size), np.arange(size)) * 3) % 256  # diagonal ramps: 45/135 degrees
    x[2] = 0                                                  # flat: zero gradients everywhere
    if dtype == np.uint8:
        return x.astype(np.uint8)
    return (x / 255).astype(dtype)


@pytest.mark.parametrize("size,orientations,cell,block,norm", PARAMS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_hog_batch_matches_skimage_on_random_images(size, orientations, cell, block, norm, dtype):
    cfg = FeatureConfig(hog_size=size, orientations=orientations, cell=cell, block=block, block_norm=norm)
    images = _random_images(np.random.default_rng(size), 6, size, dtype)
    ours, ref = hog_batch(images, **cfg.hog_args()), _skimage(images, cfg)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (6, cfg.hog_dim)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 0.1  # the images have structure: not a match of zeros


def _real_images(synth_data, n=6, size=128):
    root, records = synth_data
    return np.stack([decode_resize((root / r.path).read_bytes(), size) for r in records[:n]])


@pytest.mark.parametrize("size,orientations,cell,block,norm", PARAMS[:3])
def test_hog_batch_matches_skimage_on_real_images(synth_data, size, orientations, cell, block, norm):
    cfg = FeatureConfig(hog_size=size, orientations=orientations, cell=cell, block=block, block_norm=norm)
    rgb = _real_images(synth_data, size=size)
    gray = cv2.cvtColor(rgb.reshape(-1, size, 3), cv2.COLOR_RGB2GRAY).reshape(len(rgb), size, size)
    np.testing.assert_allclose(hog_batch(gray, **cfg.hog_args()), _skimage(gray, cfg), atol=1e-4, rtol=0)
    float_gray = gray.astype(np.float32) / 255
    np.testing.assert_allclose(hog_batch(float_gray, **cfg.hog_args()), _skimage(float_gray, cfg), atol=1e-4, rtol=0)


def test_default_hog_is_the_papers_8100_dims():
    cfg = FeatureConfig()
    assert (cfg.hog_size, cfg.orientations, cfg.cell, cfg.block, cfg.block_norm) == (128, 9, 8, 2, "L2-Hys")
    assert cfg.hog_dim == 15 * 15 * 2 * 2 * 9 == 8100
    assert hog_batch(np.zeros((2, 128, 128), np.uint8), **cfg.hog_args()).shape == (2, 8100)


@pytest.mark.parametrize("norm", ["L2-Hys", "L1"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_hog_batch_gives_the_same_bits_whatever_the_batch_alignment_and_threads(norm, dtype):
    """A feature shard's numbers depend on the image alone: not on which images share its batch, where
    the batch sits in memory or how many threads OpenCV and numpy use (one ulp of difference in the
    features changed a demo run's micro-F1 in the third decimal)."""
    import threadpoolctl

    images = _random_images(np.random.default_rng(3), 64, 128, dtype)
    ref = hog_batch(images, block_norm=norm)
    for _ in range(3):
        assert np.array_equal(hog_batch(images, block_norm=norm), ref)
    for offset in (1, 3, 8):  # the same pixels at another address, unaligned for float32 too
        raw = np.zeros(images.nbytes + 16, np.uint8)
        raw[offset:offset + images.nbytes] = images.reshape(-1).view(np.uint8)
        moved = raw[offset:offset + images.nbytes].view(images.dtype).reshape(images.shape)
        assert np.array_equal(hog_batch(moved, block_norm=norm), ref), offset
    for part in (slice(0, 32), slice(5, 9), slice(63, 64)):
        assert np.array_equal(hog_batch(images[part], block_norm=norm), ref[part]), part
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        with threadpoolctl.threadpool_limits(1):
            assert np.array_equal(hog_batch(images, block_norm=norm), ref)
    finally:
        cv2.setNumThreads(threads)


def _histogramdd(rgb, cfg):
    """Reference: np.histogramdd over the same 8-bit HSV (or RGB) values."""
    out = []
    for im in rgb:
        hsv = cv2.cvtColor(im, cv2.COLOR_RGB2HSV).reshape(-1, 3)
        vals = hsv if cfg.color_space == "HSV" else im.reshape(-1, 3)
        if cfg.ignore_background:
            bg = (hsv[:, 1] / 255 < cfg.background_max_s) & (hsv[:, 2] / 255 > cfg.background_min_v)
            vals = vals[~bg]
        first = 180 if cfg.color_space == "HSV" else 256
        edges = [np.linspace(0, first, cfg.bins + 1), np.linspace(0, 256, cfg.bins + 1),
                 np.linspace(0, 256, cfg.bins + 1)]
        h, _ = np.histogramdd(vals.astype(np.float64), bins=edges)
        out.append(h.ravel() / max(len(vals), 1))
    return np.stack(out)


@pytest.mark.parametrize("space,bins,ignore", [("HSV", 8, True), ("HSV", 8, False), ("HSV", 5, True),
                                               ("RGB", 4, True), ("RGB", 8, False)])
def test_color_hist_matches_histogramdd(synth_data, space, bins, ignore):
    cfg = FeatureConfig(color_space=space, bins=bins, ignore_background=ignore)
    rng = np.random.default_rng(bins)
    rand = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    rand[0, :20] = 250                       # half near-white background
    for rgb in (rand, _real_images(synth_data, n=4, size=64)):
        ours, ref = color_hist_batch(rgb, **cfg.hist_args()), _histogramdd(rgb, cfg)
        assert ours.dtype == np.float32 and ours.shape == (len(rgb), bins ** 3)
        np.testing.assert_allclose(ours, ref, atol=1e-6)
        np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-5)


def test_background_rule_and_all_background_image():
    cfg = FeatureConfig()
    white = np.full((2, 16, 16, 3), 255, np.uint8)
    white[1, :8] = (200, 30, 40)             # red garment on the top half of the second image
    hist = color_hist_batch(white, **cfg.hist_args())
    assert not np.isnan(hist).any()
    assert (hist[0] == 0).all()              # all background: all-zero histogram, not NaN
    assert hist[1].sum() == pytest.approx(1.0) and (hist[1] > 0).sum() == 1  # only the red pixels count
    kept = color_hist_batch(white, **FeatureConfig(ignore_background=False).hist_args())
    assert kept[0].sum() == pytest.approx(1.0) and kept[1].max() == pytest.approx(0.5)
    # the precise rule: S/255 < 0.1 and V/255 > 0.9 on 8-bit HSV
    px = np.array([[[[230, 230, 230],      # V=230 (0.902), S=0: background
                     [229, 229, 229],      # V=229 (0.898): kept, bin (0, 0, 7)
                     [255, 232, 232],      # V=255, S=23 (0.090): background
                     [255, 229, 229]]]],   # V=255, S=26 (0.102): kept, bin (0, 0, 7)
                  np.uint8)
    hist = color_hist_batch(px, **cfg.hist_args())[0]
    assert np.flatnonzero(hist).tolist() == [7] and hist[7] == 1.0


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="dtype"):
        FeatureConfig(dtype="float64")
    with pytest.raises(UserError, match="hog_size"):
        FeatureConfig(hog_size=8)
