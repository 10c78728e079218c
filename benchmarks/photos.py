"""A small labelled set of real photographs, cut from the photos that installed packages ship.

No machine here reaches the web, so the real photos are the ones inside site-packages:
scikit-image's ``skimage/data`` (astronaut, coffee, chelsea, rocket, the motorcycle stereo
pair, hubble_deep_field, ihc, retina, camera, coins, brick, grass, gravel, page, text, moon,
cell), scikit-learn's ``load_sample_images`` (china, flower) and matplotlib's sample_data
(grace_hopper): 21 photographs, 13 in colour and 8 grey. Drawings, logos and test patterns
shipped beside them (color.png, logo.png, horse.png, phantom.png, chessboards,
Minduka_Present_Blue_Pack.png) are left out, and so are clock_motion.png (a synthetic blur)
and lfw_subset.npy (25 px faces).

**Labels** (16, multi-label), each crop labelled by one written rule, never by eye per crop:

- content labels (person, animal, food, vehicle, building, sky, plant, text, metal,
  biomedical, space, texture, flag): every source photo has boxes drawn once by hand
  (``SOURCES``, fractions of width and height) around what it shows; a crop gets a box's
  label when at least half of the box lies inside the crop, or the box covers at least
  30 % of the crop;
- grey: the source photo is single-channel;
- red, blue: computed from the crop's pixels: at least 12 % of them in the hue band
  (red: hue within 20 degrees of 0, saturation >= 0.5, value >= 0.3; blue: hue 190-260
  degrees, saturation >= 0.35, value >= 0.2).

**Crops.** Each photo is cut into a validation band (one side, ``val`` in ``SOURCES``: 25-37 %
of its width or height, the side chosen so the band shows something labelled) and the rest,
the training region. Training crops lie wholly inside the training region, validation crops
wholly inside the band, so no pixel is in both splits: rectangles with a side of 30-80 % of the
photo's shorter side (aspect 3/4 to 4/3; cut to the region where it is narrower, so crops of a
band may be up to about 1:3), random place, a horizontal flip half of the time, each
written as a JPEG (quality 92, longer side at most 512 px). The stereo pair's right image has
a wider band (37 %), so that the part of the scene the left image keeps for validation is not
trained on from the right. Crops are shared out over the photos in turn (every photo gets
``train // 21`` or one more), all drawn from ``--seed``.

**Leakage that remains** (the region split limits it, it does not remove it): a validation
crop comes from a photo the training crops also come from: same camera, lighting, colour
cast and often the same object (the cat's fur, the motorcycle's red tank, the coins); the
texture photos (brick, grass, gravel) look the same everywhere; the stereo pair shows one
scene from two places. So validation F1 here measures how well a model recognises new
views of photos it has seen, not new photos, and is higher than on unseen photos would be.
``split="photo"`` holds out six whole photos instead (``PHOTO_HOLDOUT``): no shared photo, but
labels such as animal and food then have no validation positive (the figures of record
use the region split).

The store is built by the real stages, as the demo's is (``stores.build_store``:
``fetch`` over ``file://`` URLs from an FGVC5-style index and label map, ``features``,
``stats``).

    python benchmarks/photos.py --out /tmp/photos         # draw the crops, build the store, print the counts
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wdr_pipe.demo.synth import Record  # noqa: E402 (after the path)

# (labelId, taskId, labelName, taskName)
LABELS = [
    (1, 1, "person", "content"), (2, 1, "animal", "content"), (3, 1, "food", "content"),
    (4, 1, "vehicle", "content"), (5, 1, "building", "content"), (6, 1, "sky", "content"),
    (7, 1, "plant", "content"), (8, 1, "text", "content"), (9, 1, "metal", "content"),
    (10, 1, "biomedical", "content"), (11, 1, "space", "content"), (12, 1, "texture", "content"),
    (13, 1, "flag", "content"), (14, 2, "grey", "colour"), (15, 2, "red", "colour"), (16, 2, "blue", "colour"),
]
LID = {name: lid for lid, _, name, _ in LABELS}
WHOLE = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Source:
    name: str            # the file's path under site-packages
    boxes: Tuple[Tuple[str, Tuple[float, float, float, float]], ...]  # (label, (x0, y0, x1, y1)) fractions
    val: Tuple[str, float]  # the validation band: (left|right|top|bottom, fraction of the side)


def _motorcycle(dx: float):
    """The motorcycle's boxes (rear and body, head and fork, front wheel), shifted by ``dx`` (the stereo pair)."""
    boxes = [(0.16, 0.3, 0.68, 0.82), (0.6, 0.12, 0.78, 0.6), (0.67, 0.55, 0.92, 0.9)]
    return tuple((name, (x0 + dx, y0, x1 + dx, y1)) for x0, y0, x1, y1 in boxes for name in ("vehicle", "metal"))


SOURCES: Tuple[Source, ...] = (
    Source("skimage/data/astronaut.png", (("person", (0.28, 0.0, 0.6, 0.32)), ("person", (0.03, 0.28, 0.72, 1.0)),
                                          ("flag", (0.0, 0.0, 0.2, 1.0)),
                                          ("vehicle", (0.68, 0.0, 0.92, 0.55))), ("left", 0.3)),
    Source("skimage/data/coffee.png", (("food", (0.12, 0.03, 0.8, 0.97)), ("metal", (0.54, 0.15, 0.7, 0.82))),
           ("bottom", 0.3)),
    Source("skimage/data/chelsea.png", (("animal", (0.0, 0.0, 0.88, 1.0)),), ("bottom", 0.3)),
    Source("skimage/data/rocket.jpg", (("vehicle", (0.45, 0.28, 0.56, 0.97)), ("sky", (0.0, 0.0, 1.0, 0.88)),
                                       ("building", (0.0, 0.0, 0.14, 1.0)), ("building", (0.27, 0.28, 0.33, 1.0)),
                                       ("building", (0.68, 0.28, 0.75, 1.0)), ("building", (0.87, 0.0, 1.0, 1.0)),
                                       ("metal", (0.0, 0.0, 0.14, 1.0)), ("metal", (0.27, 0.28, 0.33, 1.0)),
                                       ("metal", (0.68, 0.28, 0.75, 1.0)), ("metal", (0.87, 0.0, 1.0, 1.0))),
           ("right", 0.3)),
    Source("skimage/data/motorcycle_left.png", _motorcycle(0.0), ("right", 0.3)),
    Source("skimage/data/motorcycle_right.png", _motorcycle(-0.07), ("right", 0.37)),
    Source("skimage/data/camera.png", (("person", (0.3, 0.12, 0.55, 0.4)), ("person", (0.0, 0.2, 0.62, 0.62)),
                                       ("person", (0.0, 0.6, 0.3, 1.0)), ("metal", (0.5, 0.26, 0.64, 0.38)),
                                       ("metal", (0.44, 0.38, 0.8, 1.0)),
                                       ("building", (0.62, 0.2, 1.0, 0.45)), ("sky", (0.0, 0.0, 1.0, 0.35)),
                                       ("plant", (0.0, 0.44, 1.0, 1.0))), ("right", 0.3)),
    Source("sklearn/datasets/images/china.jpg", (("building", (0.1, 0.06, 0.58, 1.0)), ("sky", (0.0, 0.0, 1.0, 0.5)),
                                                 ("plant", (0.0, 0.35, 0.12, 1.0)), ("plant", (0.5, 0.3, 1.0, 1.0)),
                                                 ("plant", (0.0, 0.75, 1.0, 1.0))), ("right", 0.3)),
    Source("sklearn/datasets/images/flower.jpg", (("plant", WHOLE),), ("right", 0.3)),
    Source("matplotlib/mpl-data/sample_data/grace_hopper.jpg", (("person", (0.28, 0.02, 0.72, 0.55)),
                                                                ("person", (0.02, 0.5, 1.0, 1.0)),
                                                                ("flag", (0.0, 0.0, 0.32, 0.6)),
                                                                ("flag", (0.0, 0.55, 0.07, 1.0))), ("bottom", 0.3)),
    Source("skimage/data/retina.jpg", (("biomedical", (0.02, 0.02, 0.98, 0.98)),), ("right", 0.3)),
    Source("skimage/data/ihc.png", (("biomedical", WHOLE),), ("right", 0.25)),
    Source("skimage/data/cell.png", (("biomedical", WHOLE),), ("right", 0.25)),
    Source("skimage/data/hubble_deep_field.jpg", (("space", WHOLE),), ("right", 0.25)),
    Source("skimage/data/moon.png", (("space", WHOLE),), ("right", 0.25)),
    Source("skimage/data/coins.png", (("metal", (0.05, 0.05, 0.95, 0.95)),), ("bottom", 0.3)),
    Source("skimage/data/page.png", (("text", WHOLE),), ("right", 0.3)),
    Source("skimage/data/text.png", (("text", WHOLE),), ("right", 0.3)),
    Source("skimage/data/brick.png", (("texture", WHOLE),), ("right", 0.25)),
    Source("skimage/data/grass.png", (("texture", WHOLE), ("plant", WHOLE)), ("right", 0.25)),
    Source("skimage/data/gravel.png", (("texture", WHOLE),), ("right", 0.25)),
)
# split="photo": these photos give the validation crops, the others the training crops
PHOTO_HOLDOUT = ("grace_hopper.jpg", "rocket.jpg", "flower.jpg", "gravel.png", "cell.png", "moon.png")


def site_packages() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parents[1]


def _hue_fraction(rgb: np.ndarray, lo: float, hi: float, s_min: float, v_min: float) -> float:
    """Fraction of pixels with hue in [lo, hi) degrees (lo > hi wraps round 0), saturation and value
    at least ``s_min`` / ``v_min`` (HSV of ``rgb`` uint8 (h, w, 3))."""
    from PIL import Image

    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), np.float32) / 255.0
    h, s, v = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    band = (h >= lo) | (h < hi) if lo > hi else (h >= lo) & (h < hi)
    return float(np.mean(band & (s >= s_min) & (v >= v_min)))


def crop_labels(src: Source, grey: bool, box: Tuple[int, int, int, int], size: Tuple[int, int],
                pixels: np.ndarray) -> List[int]:
    """The label ids of the crop ``box`` (x0, y0, x1, y1 px) of a ``size`` (w, h) photo (module doc)."""
    w, h = size
    x0, y0, x1, y1 = box
    crop_area = (x1 - x0) * (y1 - y0)
    out = set()
    for name, (bx0, by0, bx1, by1) in src.boxes:
        bx0, bx1, by0, by1 = bx0 * w, bx1 * w, by0 * h, by1 * h
        inter = max(0.0, min(x1, bx1) - max(x0, bx0)) * max(0.0, min(y1, by1) - max(y0, by0))
        if inter >= 0.5 * (bx1 - bx0) * (by1 - by0) or inter >= 0.3 * crop_area:
            out.add(LID[name])
    if grey:
        out.add(LID["grey"])
    else:
        if _hue_fraction(pixels, 340.0, 20.0, 0.5, 0.3) >= 0.12:
            out.add(LID["red"])
        if _hue_fraction(pixels, 190.0, 260.0, 0.35, 0.2) >= 0.12:
            out.add(LID["blue"])
    return sorted(out)


def _regions(src: Source, w: int, h: int, split: str) -> Dict[str, Optional[Tuple[int, int, int, int]]]:
    """The training region and the validation band of one photo, in pixels (x0, y0, x1, y1)."""
    if split == "photo":
        held = Path(src.name).name in PHOTO_HOLDOUT
        return {"train": None if held else (0, 0, w, h), "validation": (0, 0, w, h) if held else None}
    side, frac = src.val
    if side in ("left", "right"):
        cut = int(round(w * (frac if side == "left" else 1 - frac)))
        left, right = (0, 0, cut, h), (cut, 0, w, h)
        return {"validation": left, "train": right} if side == "left" else {"train": left, "validation": right}
    cut = int(round(h * (frac if side == "top" else 1 - frac)))
    top, bottom = (0, 0, w, cut), (0, cut, w, h)
    return {"validation": top, "train": bottom} if side == "top" else {"train": top, "validation": bottom}


def _draw_box(region: Tuple[int, int, int, int], shorter: int, rng: np.random.Generator) -> Tuple[int, int, int, int]:
    rx0, ry0, rx1, ry1 = region
    rw, rh = rx1 - rx0, ry1 - ry0
    side = rng.uniform(0.3, 0.8) * shorter
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(rw, int(round(side * np.sqrt(aspect)))), min(rh, int(round(side / np.sqrt(aspect))))
    x0 = rx0 + int(rng.integers(0, rw - cw + 1))
    y0 = ry0 + int(rng.integers(0, rh - ch + 1))
    return x0, y0, x0 + cw, y0 + ch


@dataclass(frozen=True)
class Crop(Record):
    """A generated data set's record (split, image id, labels, path under the data folder) and where it was cut."""

    source: str
    box: Tuple[int, int, int, int]
    flipped: bool


def make_photos(out: Path, n_train: int = 224, n_val: int = 48, seed: int = 0, split: str = "region",
                max_side: int = 512, quality: int = 92) -> List[Crop]:
    """Cut ``n_train`` + ``n_val`` labelled crops under ``out/images/<split>/``, write ``out/label_map.csv``
    and ``out/crops.json`` (every crop's source, box, flip and labels); returns the crops. Deterministic
    from ``seed``; existing files are rewritten only when missing."""
    from PIL import Image

    if split not in ("region", "photo"):
        raise ValueError(f"split={split!r}: use 'region' or 'photo'")
    out = Path(out)
    base = site_packages()
    photos = []
    for src in SOURCES:
        path = base / src.name
        if not path.exists():
            raise SystemExit(f"{path}: missing; install scikit-image, scikit-learn and matplotlib (wdr-pipe's "
                             "dependencies) to build the photo set")
        img = Image.open(path)
        grey = img.mode in ("L", "I", "I;16", "1", "LA")
        photos.append((src, np.asarray(img.convert("RGB")), grey))
    crops: List[Crop] = []
    for split_name, n in (("train", n_train), ("validation", n_val)):
        folder = out / "images" / split_name
        folder.mkdir(parents=True, exist_ok=True)
        usable = [(i, p) for i, p in enumerate(photos)
                  if _regions(p[0], p[1].shape[1], p[1].shape[0], split)[split_name] is not None]
        for k in range(n):
            i, (src, rgb, grey) = usable[k % len(usable)]
            h, w = rgb.shape[:2]
            rng = np.random.default_rng([seed, 0 if split_name == "train" else 1, i, k])
            box = _draw_box(_regions(src, w, h, split)[split_name], min(w, h), rng)
            flip = bool(rng.random() < 0.5)
            pixels = rgb[box[1]:box[3], box[0]:box[2]]
            labels = crop_labels(src, grey, box, (w, h), pixels)
            image_id = f"{split_name[0]}{k:04d}"
            rel = f"images/{split_name}/{image_id}.jpg"
            if not (out / rel).exists():
                im = Image.fromarray(pixels[:, ::-1] if flip else pixels)
                if grey:
                    im = im.convert("L")
                if max(im.size) > max_side:
                    im.thumbnail((max_side, max_side), Image.LANCZOS)
                tmp = out / f"{rel}.tmp"
                im.save(tmp, "JPEG", quality=quality)
                tmp.replace(out / rel)
            crops.append(Crop(split_name, image_id, tuple(labels), rel, Path(src.name).name, box, flip))
    with open(out / "label_map.csv", "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["labelId", "taskId", "labelName", "taskName"])
        wr.writerows(LABELS)
    (out / "crops.json").write_text(json.dumps([c.__dict__ for c in crops], indent=1), encoding="utf-8")
    return crops


def photo_store(out: Path, n_train: int = 224, n_val: int = 48, seed: int = 0, split: str = "region",
                size: int = 256, **stages) -> Path:
    """The store of the photo set under ``out/store`` (crops under ``out/data``), built by the real fetch,
    features and stats stages at a ``size`` px shorter side; reused when complete. ``stages``: more of
    ``build_store``'s keywords."""
    from stores import build_store

    out = Path(out)
    store = out / "store"
    if (store / "stats" / "train" / "config.json").exists():
        return store
    crops = make_photos(out / "data", n_train, n_val, seed=seed, split=split)
    return build_store(store, out / "data", crops, size=size, shard_size=max(n_train, n_val), **stages)


def describe(crops: Sequence[Crop]) -> str:
    """Counts per label and split, as a Markdown table."""
    names = {lid: name for lid, _, name, _ in LABELS}
    lines = ["| label | train | validation |", "|---|---:|---:|"]
    for lid in names:
        t = sum(lid in c.labels for c in crops if c.split == "train")
        v = sum(lid in c.labels for c in crops if c.split == "validation")
        lines.append(f"| {names[lid]} | {t} | {v} |")
    n_t = sum(c.split == "train" for c in crops)
    n_v = len(crops) - n_t
    per = [len(c.labels) for c in crops]
    lines.append(f"| images | {n_t} | {n_v} |")
    lines.append(f"\n{np.mean(per):.2f} labels per image (min {min(per)}, max {max(per)}); "
                 f"{sum(not c.labels for c in crops)} crops without a label")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=224)
    ap.add_argument("--val", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="region", choices=["region", "photo"])
    ap.add_argument("--size", type=int, default=256, help="shorter side of the stored images (px)")
    ap.add_argument("--crops-only", action="store_true", help="cut the crops, build no store")
    args = ap.parse_args()
    if args.crops_only:
        crops = make_photos(args.out / "data", args.train, args.val, seed=args.seed, split=args.split)
    else:
        photo_store(args.out, args.train, args.val, seed=args.seed, split=args.split, size=args.size)
        crops = [Crop(**{**c, "labels": tuple(c["labels"]), "box": tuple(c["box"])})
                 for c in json.loads((args.out / "data" / "crops.json").read_text())]
    print(describe(crops))


if __name__ == "__main__":
    main()
