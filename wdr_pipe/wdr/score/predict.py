"""Prediction: a store split -> a Kaggle submission (``predict_split``), and new photos -> tags (``tag_images``).

Submission (``wdr-pipe predict --store S --run RUN --split test --out submission.csv``):
a CSV written by the csv module (an id with a comma, quote or line break stays one
field; one that a spreadsheet would run as a formula gets a leading ``'``:
``evalfiles.safe_cell``), header ``image_id,label_id``, then one row per row of ``STORE/index/<split>.parquet``,
in index order, with the index's own image ids and the label ids
space-separated in ascending order (the store keeps the data set's own ids,
1..228 for FGVC5). An image's labels are those whose probability reaches the
run's threshold (none may: the row then has an empty ``label_id``, as
evaluation counts it). An image the model never saw (its download failed, its
wide features failed, or it did not decode) gets the **fallback**: the k most
frequent training labels, k chosen for the best expected micro-F1 of giving
that one set to every image (``runs.fallback_labels``); the result counts
those rows. ``--probs PATH`` also writes the probabilities as Parquet
(``evalfiles.py`` format: image_id, probs, predicted; label ids in the metadata).

New photos (``wdr-pipe predict --run RUN IMAGE_OR_URL...``): each file or URL is
read (http, https, file; a 20 MB cap), resized exactly as ``fetch`` stored the
training images (``wdr_pipe.imaging.process`` with the training split's fetch
settings, so also re-encoded as the same JPEG), decoded and put through the
run's eval transform. All inputs are read and checked before the model runs.
A run with the wide part also needs each photo's HOG and colour features:
``data.wide.photo_wide`` computes them with the features stage's own code and
the training store's feature config.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ...cache import config_key, index_ids, open_store
from ...cache.atomic import write_text_atomic
from ...checks import check_all
from ...errors import UserError
from ...imaging import ADVICE, ImageRejected, decode_rgb, process
from ...progress import Hook
from ...result import StageResult
from ..checks import PREDICT_BOUNDS, TOP, check_device
from ..data.wide import photo_wide
from ..runs.evalfiles import csv_text, write_predictions
from ..runs.folder import open_run
from ..runs.outputs import check_outputs, prepare
from .checks import check_inputs, fallback_labels, image_spec
from .ensemble import scorer_for
from .evaluate import label_names

log = logging.getLogger("wdr_pipe")
MAX_BYTES = 20 * 2 ** 20
DEADLINE = 60.0  # seconds for a whole URL download (a server may drip bytes within every timeout)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    store: str
    run: str
    out: str
    split: str = "test"
    probs: Optional[str] = None
    checkpoint: Optional[str] = None
    tta: Optional[str] = None
    device: str = "auto"
    batch_size: int = 64
    loader_workers: int = 2

    def __post_init__(self):
        check_all("predict config", self, PREDICT_BOUNDS)
        check_device(self.device)


def predict_split(cfg: PredictConfig, progress: Hook = None) -> StageResult:
    """Write the submission for every row of the split's index (and the probabilities with ``probs``)."""
    t0 = time.time()
    paths = check_outputs({"--out": cfg.out, "--probs": cfg.probs})  # before any work: no write destroys
    out, probs_path = paths["--out"], paths.get("--probs")
    run = open_run(cfg.run)
    store = open_store(cfg.store)
    rows = index_ids(store, cfg.split)
    check_inputs(run, store, cfg.split)
    scorer = scorer_for(run, cfg.checkpoint, cfg.tta, cfg.device, cfg.batch_size, cfg.loader_workers)
    thresholds, source_of_thresholds = run.read_thresholds()
    scored = scorer.score_split(store, cfg.split, progress=progress)
    fallback = fallback_labels(run, store)
    ids = run.label_ids
    where = {k: i for i, k in enumerate(scored.ids.tolist())}
    decided = scored.probs >= thresholds[None, :]
    lines, missing = [], 0
    fallback_text = " ".join(map(str, fallback))
    for image_id in rows:
        i = where.get(image_id)
        if i is None:
            missing += 1
            lines.append((image_id, fallback_text))
        else:
            lines.append((image_id, " ".join(map(str, ids[decided[i]]))))
    if probs_path is not None:
        write_predictions(prepare(probs_path), scored.take([i for i in rows if i in where]), ids, thresholds,
                          scorer.source(store, cfg.split))
    write_text_atomic(prepare(out), csv_text(["image_id", "label_id"], lines))
    n = len(scored.ids)
    speed = None if scored.reused or not scored.seconds else n / scored.seconds
    return StageResult(
        stage="predict", key=config_key(cfg), output=str(out), seconds=time.time() - t0, ran=1,
        counts={"rows": len(rows), "predicted": len(rows) - missing, "fallback": missing},
        details={"split": cfg.split, "fallback_labels": fallback.tolist(), "thresholds": source_of_thresholds,
                 "images_per_s": speed, "probs": str(probs_path) if probs_path else None,
                 "device": str(scorer.device)},
        summary=[f"{len(rows)} rows: {len(rows) - missing} predicted" + (f" at {speed:.0f} images/s" if speed else "")
                 + f", {missing} with the fallback labels ({' '.join(map(str, fallback.tolist())) or 'none'})"])


# -- new photos --------------------------------------------------------------------------------
def read_source(src: str, timeout: float = 15.0, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of an image file or URL; a ``UserError`` naming the input and the fix. A URL is bounded:
    ``timeout`` for each network wait, ``DEADLINE`` seconds for the whole download, ``max_bytes``."""
    if _URL.match(src):
        scheme = src.split(":", 1)[0].lower()
        if scheme not in ("http", "https", "file"):
            raise UserError(f"{src}: unsupported URL scheme {scheme!r}; pass an http(s) URL or a file")
        try:
            request = urllib.request.Request(src, headers={"User-Agent": "wdr-pipe"})
            with urllib.request.urlopen(request, timeout=timeout) as r:
                data = _read_bounded(r, src, max_bytes, time.monotonic() + DEADLINE)
        except urllib.error.HTTPError as e:
            raise UserError(f"{src}: the server answered HTTP {e.code} ({e.reason}); check the URL") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"{src}: unreachable ({reason}); check the URL and the network, or download the image "
                            "and pass the file") from None
        if len(data) > max_bytes:
            raise UserError(f"{src}: larger than {max_bytes // 2 ** 20} MB; pass a smaller image")
        return data
    if not src.strip():
        raise UserError("an empty IMAGE_OR_URL; pass an image file or an http(s) URL")
    path = Path(src).expanduser()
    if path.is_dir():
        raise UserError(f"{src}: is a folder; pass image files (e.g. {src}/*.jpg)")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{src}: no such file; pass an image file or an http(s) URL") from None
    except OSError as e:
        raise UserError(f"{src}: cannot be read ({e.strerror}); check its permissions") from None


def _read_bounded(response, src: str, max_bytes: int, deadline: float) -> bytes:
    """What arrives as it arrives (``read1``), until the end, ``max_bytes`` + 1 or the deadline."""
    data = bytearray()
    read = getattr(response, "read1", response.read)
    while len(data) <= max_bytes:
        chunk = read(min(1 << 16, max_bytes + 1 - len(data)))
        if not chunk:
            break
        data += chunk
        if time.monotonic() > deadline:
            raise UserError(f"{src}: still downloading after {DEADLINE:g} s (a server that sends too slowly); "
                            "download the image and pass the file")
    return bytes(data)


WideFn = Callable[[Any, str, List[bytes]], np.ndarray]  # (store, feature key, stored JPEGs) -> (N, D)


def tag_images(run_path: str, sources: Sequence[str], store: Optional[str] = None, checkpoint: Optional[str] = None,
               tta: Optional[str] = None, device: str = "auto", top: int = 5,
               wide_features: Optional[WideFn] = photo_wide) -> List[Dict[str, Any]]:
    """Per source: ``{"source", "labels": [predicted, by score], "top": [the top labels]}``, each label
    ``{"label_id", "name", "task", "score", "threshold"}``. A run with the wide part gets each photo's wide
    input from ``wide_features`` (default: the features stage's code with the training store's feature config)."""
    if not sources:
        raise UserError("no IMAGE_OR_URL given; pass image files or URLs (or --store and --split for a store split)")
    TOP.check("predict", top, "top")
    check_device(device)
    run = open_run(run_path)
    st = _store_for_images(run, store)
    spec, _ = image_spec(run, st)
    jpegs = []
    for src in sources:  # every input read and checked before the model is loaded
        try:
            jpegs.append(process(read_source(src), spec)[0])
        except ImageRejected as e:
            raise UserError(f"{src}: {e} ({e.status}); {ADVICE[e.status]}") from None
    scorer = scorer_for(run, checkpoint, tta, device)
    wide = None
    if scorer.feature_keys():
        if wide_features is None or st is None:
            raise UserError(f"--run {run.root}: a run with the wide part needs each photo's HOG and colour features "
                            "of its training store's feature config; pass --store with the run's training store")
        wide = {key: wide_features(st, key, jpegs) for key in scorer.feature_keys()}
    probs = scorer.score_images([decode_rgb(j) for j in jpegs], wide)
    thresholds, _ = run.read_thresholds()
    names = label_names(st) if st is not None else {}

    def label(j: int, p: np.ndarray) -> Dict[str, Any]:
        lid = int(run.label_ids[j])
        info = names.get(lid, {})
        return {"label_id": lid, "name": info.get("name", ""), "task": info.get("task", ""),
                "score": round(float(p[j]), 4), "threshold": round(float(thresholds[j]), 4)}

    out = []
    for src, p in zip(sources, probs):
        order = np.argsort(-p, kind="stable")
        out.append({"source": src, "labels": [label(j, p) for j in order if p[j] >= thresholds[j]],
                    "top": [label(j, p) for j in order[:top]]})
    return out


def _store_for_images(run, store: Optional[str]):
    """The store whose fetch settings (and feature config) new photos follow: ``--store`` or the run's own."""
    if store is not None:
        return open_store(store)
    try:
        return open_store(run.store_path)
    except UserError:
        log.warning("the run's training store %s is not here; new images follow fetch's default settings",
                    run.store_path)
        return None


def tag_lines(tagged: List[Dict[str, Any]]) -> List[str]:
    """What ``wdr-pipe predict IMAGE...`` prints: one line per image."""
    lines = []
    for t in tagged:
        shown = t["labels"] or t["top"][:1]
        text = ", ".join(f"{(x['name'] or x['label_id'])} ({x['label_id']}) {x['score']:.2f}" for x in shown)
        lines.append(f"{t['source']}: {text}" + ("" if t["labels"] else "  [no label reached its threshold; top one shown]"))
    return lines


__all__ = ["PredictConfig", "predict_split", "read_source", "tag_images", "tag_lines"]
