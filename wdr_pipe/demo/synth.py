"""Procedural fashion data in the FGVC5 format, for tests, the demo and benchmarks.

Each image is a garment drawn on a light studio background: its *shape*
gives the category and sleeve labels, its *colour* the colour label and its
*texture* the pattern label, and labels co-occur the way real ones do (a
dress implies female, stripes imply a second colour). Images are drawn
deterministically from ``(seed, split, image_id)``, with lighting, blur and
sensor noise so they compress like photographs.

``make_dataset(out)`` writes ``out/images/<split>/<id>.jpg``,
``out/label_map.csv`` and, once a base URL is known, ``write_fgvc5_json``
writes ``out/<split>.json`` pointing at a server (see ``serve.py``).
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..progress import Hook, Progress, emit

# (labelId, taskId, labelName, taskName): the synthetic label map.
CATEGORIES = ["T-shirt", "Dress", "Trousers", "Skirt", "Jacket", "Tank top"]
COLOURS = {
    "Red": (200, 30, 40), "Blue": (30, 60, 190), "Green": (40, 150, 60), "Black": (25, 25, 28),
    "Yellow": (235, 200, 40), "Pink": (235, 130, 170), "Grey": (128, 128, 132), "Brown": (120, 75, 40),
}
PATTERNS = ["Solid", "Striped", "Dotted", "Checked"]
SLEEVES = ["Sleeveless", "Short sleeves", "Long sleeves"]
GENDERS = ["Female", "Male"]
GROUPS = [("category", CATEGORIES), ("color", list(COLOURS)), ("pattern", PATTERNS),
          ("sleeve", SLEEVES), ("gender", GENDERS), ("extra", ["Multicolour"])]


def label_map() -> List[Tuple[int, int, str, str]]:
    rows, lid = [], 1
    for task_id, (task, names) in enumerate(GROUPS, start=1):
        for name in names:
            rows.append((lid, task_id, name, task))
            lid += 1
    return rows


_IDS = {(task, name): lid for lid, _, name, task in label_map()}


def lid(task: str, name: str) -> int:
    return _IDS[(task, name)]


@dataclass(frozen=True)
class Garment:
    category: str
    colour: str
    pattern: str
    sleeve: str      # "" where the category has no sleeves
    gender: str
    colour2: str     # second colour of a pattern ("" for solid)

    def labels(self) -> List[int]:
        out = [lid("category", self.category), lid("color", self.colour), lid("pattern", self.pattern),
               lid("gender", self.gender)]
        if self.sleeve:
            out.append(lid("sleeve", self.sleeve))
        if self.colour2:
            out += [lid("color", self.colour2), lid("extra", "Multicolour")]
        return sorted(set(out))


def sample_garment(rng: np.random.Generator) -> Garment:
    """Draw labels with skewed frequencies and realistic co-occurrence."""
    cat = CATEGORIES[rng.choice(len(CATEGORIES), p=[0.3, 0.2, 0.2, 0.1, 0.12, 0.08])]
    female_p = {"Dress": 1.0, "Skirt": 1.0, "Trousers": 0.3, "Jacket": 0.4}.get(cat, 0.55)
    gender = "Female" if rng.random() < female_p else "Male"
    colour_p = np.array([0.12, 0.2, 0.08, 0.25, 0.05, 0.1 if gender == "Female" else 0.01, 0.12, 0.08])
    if cat == "Jacket":
        colour_p[[3, 7]] *= 3  # jackets are mostly black or brown
    names = list(COLOURS)
    colour = names[rng.choice(len(names), p=colour_p / colour_p.sum())]
    pattern = PATTERNS[rng.choice(4, p=[0.55, 0.2, 0.12, 0.13])]
    colour2 = ""
    if pattern != "Solid":
        others = [c for c in names if c != colour]
        colour2 = others[rng.integers(len(others))]
    sleeve = ""
    if cat in ("T-shirt", "Dress", "Jacket"):
        sleeve = {"T-shirt": "Short sleeves", "Jacket": "Long sleeves"}.get(cat) or SLEEVES[rng.integers(3)]
        if cat == "T-shirt" and rng.random() < 0.25:
            sleeve = "Long sleeves"
    elif cat == "Tank top":
        sleeve = "Sleeveless"
    return Garment(cat, colour, pattern, sleeve, gender, colour2)


def _outline(g: Garment, w: int, h: int, rng: np.random.Generator) -> List[Tuple[float, float]]:
    """Polygon of the garment, jittered, in pixel coordinates."""
    cx, top, bot = w / 2, h * 0.12, h * 0.88
    s = min(w, h) * (0.85 + 0.1 * rng.random())
    sl = {"Sleeveless": 0.0, "Short sleeves": 0.18, "Long sleeves": 0.42, "": 0.0}[g.sleeve]
    if g.category in ("T-shirt", "Jacket", "Tank top"):
        bw, sh = s * 0.30, s * 0.36
        pts = [(cx - bw * 0.5, top), (cx - sh, top + s * 0.05)]
        if sl:
            pts += [(cx - sh - s * 0.12, top + s * sl), (cx - sh + s * 0.02, top + s * sl + s * 0.06)]
        pts += [(cx - bw, top + s * 0.25), (cx - bw, bot), (cx + bw, bot), (cx + bw, top + s * 0.25)]
        if sl:
            pts += [(cx + sh - s * 0.02, top + s * sl + s * 0.06), (cx + sh + s * 0.12, top + s * sl)]
        pts += [(cx + sh, top + s * 0.05), (cx + bw * 0.5, top), (cx, top + s * 0.08)]
    elif g.category == "Dress":
        pts = [(cx - s * 0.12, top), (cx - s * 0.2, top + s * 0.08)]
        if sl:
            pts += [(cx - s * 0.32, top + s * sl * 0.8), (cx - s * 0.22, top + s * sl * 0.8 + s * 0.05)]
        pts += [(cx - s * 0.15, top + s * 0.35), (cx - s * 0.38, bot), (cx + s * 0.38, bot), (cx + s * 0.15, top + s * 0.35)]
        if sl:
            pts += [(cx + s * 0.22, top + s * sl * 0.8 + s * 0.05), (cx + s * 0.32, top + s * sl * 0.8)]
        pts += [(cx + s * 0.2, top + s * 0.08), (cx + s * 0.12, top), (cx, top + s * 0.06)]
    elif g.category == "Trousers":
        pts = [(cx - s * 0.25, top), (cx + s * 0.25, top), (cx + s * 0.3, bot), (cx + s * 0.06, bot),
               (cx, top + s * 0.3), (cx - s * 0.06, bot), (cx - s * 0.3, bot)]
    else:  # Skirt
        pts = [(cx - s * 0.2, top + s * 0.15), (cx + s * 0.2, top + s * 0.15), (cx + s * 0.42, bot * 0.85),
               (cx - s * 0.42, bot * 0.85)]
    return [(x + rng.normal(0, s * 0.01), y + rng.normal(0, s * 0.01)) for x, y in pts]


def _texture(g: Garment, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) float mask in [0, 1]: 1 where the second colour shows."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = min(h, w) * (0.05 + 0.04 * rng.random())
    if g.pattern == "Striped":
        ang = rng.uniform(-0.4, 0.4)
        return (np.sin((xx * np.sin(ang) + yy * np.cos(ang)) * 2 * np.pi / period) > 0.3).astype(np.float32)
    if g.pattern == "Dotted":
        fx = (xx % period) - period / 2
        fy = (yy % period) - period / 2
        return (fx * fx + fy * fy < (period * 0.22) ** 2).astype(np.float32)
    if g.pattern == "Checked":
        return (((xx // period) + (yy // period)) % 2).astype(np.float32)
    return np.zeros((h, w), np.float32)


def draw_image(g: Garment, width: int, height: int, seed: int) -> Image.Image:
    """Render one garment photo (RGB, ``width`` x ``height``)."""
    rng = np.random.default_rng(seed)
    # studio background: near white with a soft vertical gradient
    yy = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    bg = 238 + 12 * (1 - yy) + np.zeros((height, width, 3), np.float32)
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).polygon(_outline(g, width, height, rng), fill=255)
    m = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)), np.float32)[..., None] / 255.0
    c1 = np.array(COLOURS[g.colour], np.float32)
    cloth = np.broadcast_to(c1, (height, width, 3)).copy()
    if g.colour2:
        t = _texture(g, height, width, rng)[..., None]
        cloth = cloth * (1 - t) + np.array(COLOURS[g.colour2], np.float32) * t
    # lighting: a smooth shading field, so the fabric looks lit rather than flat
    ys, xs = np.mgrid[0:height:8, 0:width:8].astype(np.float32)
    shade = 0.85 + 0.15 * np.sin(xs / width * np.pi * rng.uniform(1, 3) + rng.uniform(0, 6)) * np.cos(ys / height * np.pi)
    shade = np.asarray(Image.fromarray((shade * 200).astype(np.uint8)).resize((width, height), Image.BILINEAR),
                       np.float32)[..., None] / 200.0
    img = bg * (1 - m) + cloth * shade * m
    img = img + rng.normal(0, 2.5, size=((height + 1) // 2, (width + 1) // 2, 1)).repeat(2, 0).repeat(2, 1)[:height, :width]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    return out.filter(ImageFilter.GaussianBlur(0.6))


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class Record:
    split: str
    image_id: str
    labels: Tuple[int, ...]
    path: str  # relative to the dataset folder: images/<split>/<id>.jpg


def _draw_one(job: Tuple[str, int, int, int, Tuple[int, int], int, str]) -> Record:
    """Draw (or find) one image file; returns its record. Module-level for process pools."""
    split, s_idx, i, seed, size_range, quality, folder = job
    rng = np.random.default_rng([seed, s_idx, i])
    g = sample_garment(rng)
    w = int(rng.integers(size_range[0], size_range[1] + 1))
    h = int(rng.integers(size_range[0], size_range[1] + 1))
    path = Path(folder) / f"{i}.jpg"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(encode_jpeg(draw_image(g, w, h, int(rng.integers(2**31))), quality))
        tmp.replace(path)
    return Record(split, str(i), tuple(g.labels()), f"images/{split}/{i}.jpg")


def make_dataset(out: Path, splits: Dict[str, int], seed: int = 0,
                 size_range: Tuple[int, int] = (600, 1000), quality: int = 90,
                 progress: Hook = None, processes: Optional[int] = None) -> List[Record]:
    """Draw ``splits[name]`` images per split under ``out``; returns the records.

    Existing image files are kept (drawing is deterministic), so a second call is cheap.
    Large sets are drawn on a process pool (``processes``, default: every core).
    """
    out = Path(out)
    jobs = []
    for s_idx, (split, n) in enumerate(splits.items()):
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        jobs += [(split, s_idx, i, seed, size_range, quality, str(folder)) for i in range(1, n + 1)]
    processes = processes or os.cpu_count() or 1
    records: List[Record] = []
    if processes > 1 and len(jobs) >= 100:
        # forkserver/spawn, not fork: the caller may hold threads (servers, thread pools)
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(processes) as pool:
            for rec in pool.imap(_draw_one, jobs, chunksize=8):
                records.append(rec)
                if len(records) % 10 == 0 or len(records) == len(jobs):
                    emit(progress, Progress("draw", done=len(records), total=len(jobs), ok=len(records)))
    else:
        for job in jobs:
            records.append(_draw_one(job))
            if len(records) % 10 == 0 or len(records) == len(jobs):
                emit(progress, Progress("draw", done=len(records), total=len(jobs), ok=len(records)))
    with open(out / "label_map.csv", "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["labelId", "taskId", "labelName", "taskName"])
        wr.writerows(label_map())
    return records


def write_fgvc5_json(out: Path, records: Sequence[Record], base_url: str,
                     unlabelled: Sequence[str] = ("test",), extra: Optional[Dict[str, dict]] = None) -> Dict[str, Path]:
    """Write ``<split>.json`` in the FGVC5 format with URLs under ``base_url``; ``extra[split]``
    (``{"images": [...], "annotations": [...]}``) is appended to that split's entries."""
    out = Path(out)
    by_split: Dict[str, List[Record]] = {}
    for r in records:
        by_split.setdefault(r.split, []).append(r)
    paths = {}
    for split, recs in by_split.items():
        doc = {"info": {"description": "wdr-pipe synthetic fashion data"},
               "images": [{"url": f"{base_url.rstrip('/')}/{r.path}", "imageId": r.image_id} for r in recs],
               "license": {}}
        if split not in unlabelled:
            doc["annotations"] = [{"labelId": [str(x) for x in r.labels], "imageId": r.image_id} for r in recs]
        for name, entries in (extra or {}).get(split, {}).items():
            doc.setdefault(name, []).extend(entries)
        paths[split] = out / f"{split}.json"
        paths[split].write_text(json.dumps(doc), encoding="utf-8")
    return paths
