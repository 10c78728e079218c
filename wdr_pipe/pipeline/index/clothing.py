"""The Clothing Attributes Dataset (Chen, Gallagher, Girod, ECCV 2012) as an index.

The unpacked folder holds ``images/000001.jpg`` ... and ``labels/<attribute>_GT.mat``;
each ``.mat`` has a variable ``GT`` of shape (N, 1) whose row ``k`` belongs to image
``k + 1`` (file ``000001.jpg`` is row 0). Values are 1, 2, ... (see ``ATTRIBUTES``) or
NaN for unknown. Every (attribute, value) that carries meaning gets a fixed label id
(the table is in docs/inputs.md): binary attributes give a label only for "yes",
gender gives one for each of male and female, and multi-valued attributes one per
value. Unknown (NaN) means the label is absent.

``read_clothing(folder)`` returns the index table (``wdr_pipe.cache.schema.INDEX``) with
``file://`` URLs; ``label_map_table()`` the matching label names.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa

from ...cache.schema import INDEX, LABEL_MAP
from ...errors import UserError

log = logging.getLogger("wdr_pipe")

DEFAULT_SPLIT = "clothing"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# (attribute, number of values, {value: label name}); values missing from the dict give no label.
# The order fixes the task ids (1..26) and the label ids (1..37): never reorder, only append.
ATTRIBUTES: Tuple[Tuple[str, int, Dict[int, str]], ...] = (
    ("black", 2, {2: "yes"}),
    ("blue", 2, {2: "yes"}),
    ("brown", 2, {2: "yes"}),
    ("category", 7, {1: "shirt", 2: "sweater", 3: "t-shirt", 4: "outerwear", 5: "suit", 6: "tank top",
                     7: "dress"}),
    ("collar", 2, {2: "yes"}),
    ("cyan", 2, {2: "yes"}),
    ("gender", 2, {1: "male", 2: "female"}),
    ("gray", 2, {2: "yes"}),
    ("green", 2, {2: "yes"}),
    ("many_colors", 2, {2: "yes"}),
    ("neckline", 3, {1: "v", 2: "round", 3: "other"}),
    ("necktie", 2, {2: "yes"}),
    ("pattern_floral", 2, {2: "yes"}),
    ("pattern_graphics", 2, {2: "yes"}),
    ("pattern_plaid", 2, {2: "yes"}),
    ("pattern_solid", 2, {2: "yes"}),
    ("pattern_spot", 2, {2: "yes"}),
    ("pattern_stripe", 2, {2: "yes"}),
    ("placket", 2, {2: "yes"}),
    ("purple", 2, {2: "yes"}),
    ("red", 2, {2: "yes"}),
    ("scarf", 2, {2: "yes"}),
    ("skin_exposure", 2, {2: "high"}),
    ("sleevelength", 3, {1: "none", 2: "short", 3: "long"}),
    ("white", 2, {2: "yes"}),
    ("yellow", 2, {2: "yes"}),
)


def _number_labels() -> Tuple[Dict[Tuple[str, int], int], List[Tuple[int, int, str, str]]]:
    """Label ids 1.. in ``ATTRIBUTES`` order, and the label map rows (labelId, taskId, labelName, taskName)."""
    ids, rows = {}, []
    for task_id, (attr, _, names) in enumerate(ATTRIBUTES, start=1):
        for value in sorted(names):
            ids[(attr, value)] = len(rows) + 1
            rows.append((len(rows) + 1, task_id, f"{attr}={names[value]}", attr))
    return ids, rows


# (attribute, value) -> label id, and the label map rows with labelName "attribute=value".
LABEL_IDS, LABEL_MAP_ROWS = _number_labels()


def label_map_table() -> pa.Table:
    rows = LABEL_MAP_ROWS
    return pa.Table.from_arrays([pa.array([r[k] for r in rows], LABEL_MAP.field(k).type) for k in range(4)],
                                schema=LABEL_MAP)


def _load_gt(path: Path, n_values: int) -> np.ndarray:
    """The ``GT`` column of one ``<attribute>_GT.mat`` as floats, checked against the value range."""
    import scipy.io

    try:
        gt = scipy.io.loadmat(str(path))["GT"]
    except KeyError:
        raise UserError(f"{path}: no variable 'GT' in the file; give the original <attribute>_GT.mat files") from None
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... on a broken file
        raise UserError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e}); "
                        "replace it with the original from the Clothing Attributes Dataset") from e
    gt = np.asarray(gt)
    if gt.ndim > 2 or (gt.ndim == 2 and min(gt.shape) != 1) or not np.issubdtype(gt.dtype, np.number):
        raise UserError(f"{path}: GT has shape {gt.shape} and type {gt.dtype}, expected a numeric (N, 1) column; "
                        "give the original <attribute>_GT.mat files")
    gt = gt.astype(np.float64).ravel()
    bad = ~(np.isnan(gt) | np.isin(gt, np.arange(1, n_values + 1)))
    if bad.any():
        k = int(np.argmax(bad))
        raise UserError(f"{path}: row {k + 1} (image {k + 1:06d}): value {gt[k]:g} is not one of "
                        f"1..{n_values} or NaN; fix the file or restore the original")
    return gt


def read_clothing(folder) -> pa.Table:
    """The index of an unpacked Clothing Attributes Dataset folder (INDEX schema)."""
    folder = Path(folder)
    images_dir, labels_dir = folder / "images", folder / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise UserError(f"{folder}: a folder must be the Clothing Attributes Dataset with images/ and labels/ "
                        "inside; give that folder or an index file (.json, .csv, .tsv, .parquet)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"{images_dir}: no .jpg/.jpeg/.png images; unpack the dataset's images there")
    known = {attr: n for attr, n, _ in ATTRIBUTES}
    mats = {p.name[: -len("_GT.mat")]: p for p in sorted(labels_dir.glob("*_GT.mat"))}
    for attr in sorted(set(mats) - set(known)):
        log.warning("%s: unknown attribute %r, ignored (known: %s)", mats[attr], attr, ", ".join(known))
    gts = {attr: _load_gt(mats[attr], n) for attr, n, _ in ATTRIBUTES if attr in mats}
    if not gts:
        raise UserError(f"{labels_dir}: no <attribute>_GT.mat files (such as category_GT.mat); "
                        "unpack the dataset's labels there")
    missing = [attr for attr in known if attr not in gts]
    if missing:
        log.warning("%s: no _GT.mat for %s; those labels are absent", labels_dir, ", ".join(missing))
    lengths = Counter(len(gt) for gt in gts.values())
    n_rows = lengths.most_common(1)[0][0]
    for attr, gt in gts.items():
        if len(gt) != n_rows:
            raise UserError(f"{mats[attr]}: GT has {len(gt)} rows but the other _GT.mat files have {n_rows}; "
                            "every _GT.mat must have one row per image")

    ids, urls, labels, seen = [], [], [], {}
    for p in images:
        stem = p.stem
        if not stem.isdigit() or not 1 <= int(stem) <= n_rows:
            raise UserError(f"{p}: image file name does not match a GT row (expected 000001..{n_rows:06d} "
                            f"for {n_rows} rows); rename the image or remove it")
        if stem in seen:
            raise UserError(f"{p}: image id {stem!r} appears twice (also {seen[stem].name}); keep one of them")
        seen[stem] = p
        row = int(stem) - 1
        lids = []
        for attr, gt in gts.items():
            v = gt[row]
            if not np.isnan(v) and (attr, int(v)) in LABEL_IDS:
                lids.append(LABEL_IDS[(attr, int(v))])
        ids.append(stem)
        urls.append([p.resolve().as_uri()])
        labels.append(sorted(lids))
    log.info("%s: %d images, %d attributes", folder, len(ids), len(gts))
    return pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(urls, pa.list_(pa.string())), pa.array(labels, pa.list_(pa.int32()))],
        schema=INDEX,
    )
