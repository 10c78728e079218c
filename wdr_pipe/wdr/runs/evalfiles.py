"""What evaluation and prediction write, and read back: probabilities as Parquet, the per-label table.

``RUN/eval/<split>/``::

    metrics.json         headline metrics at 0.5 and at the run's thresholds (key ``micro_f1``: tuned)
    per_label.csv        one row per label: id, name, task, support, precision, recall, F1, threshold ...
    predictions.parquet  one row per scored image (schema below)
    saliency.safetensors Grad-CAM maps of a few images (``score/evaluate.py``, ``model/saliency.py``)
    report.html          the report (``wdr_pipe.report``), built from the files above
    result.json          written last: the evaluation's commit marker (after the report, when one is made)

``predictions.parquet`` (also what ``predict --probs`` writes)::

    image_id   string
    probs      fixed_size_list<float32>[L]   in the order of the run's label ids
    predicted  list<int32>                   label ids at the thresholds (the run's own ids)
    labels     list<int32>                   true label ids (null for an unlabelled split)

with the file metadata key ``wdr_pipe`` holding JSON: ``label_ids`` (the L ids,
column order), ``thresholds`` and ``source`` (run, checkpoint, step, weights
digest, TTA, split and the store's fingerprint of the split), which tells a
later evaluation or ensemble whether it can reuse the probabilities.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...cache.atomic import write_parquet_atomic, write_text_atomic
from ...cache.jsonfile import read_json, write_json
from ...cache.resultfile import result_path
from ...cache.tensorfile import read_tree, write_tree
from ...errors import UserError, first_line

META_KEY = b"wdr_pipe"


@dataclasses.dataclass
class Scored:
    """Probabilities of the images of one split (or of a few files), in column order of the run's labels."""

    ids: np.ndarray                       # (N,) str (object)
    probs: np.ndarray                     # (N, L) float32
    labels: Optional[np.ndarray] = None   # (N, L) uint8, None for an unlabelled split
    skipped: Dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False
    loss: Optional[np.ndarray] = None     # (N,) per-image loss (training's validation only)

    def take(self, ids) -> "Scored":
        """The rows of ``ids`` (all of them must be here), in that order."""
        pos = {k: i for i, k in enumerate(self.ids.tolist())}
        rows = np.array([pos[i] for i in ids], dtype=np.int64)
        return Scored(np.asarray(ids, dtype=object), self.probs[rows],
                      None if self.labels is None else self.labels[rows], dict(self.skipped), self.seconds, self.reused)


def _id_lists(mask: np.ndarray, label_ids: np.ndarray) -> pa.Array:
    rows, cols = np.nonzero(mask)
    offsets = np.zeros(mask.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=mask.shape[0]), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(label_ids[cols].astype(np.int32)))


def predictions_table(scored: Scored, label_ids, thresholds, source: Dict[str, Any]) -> pa.Table:
    label_ids = np.asarray(label_ids, dtype=np.int64)
    n, width = scored.probs.shape
    probs = pa.FixedSizeListArray.from_arrays(pa.array(scored.probs.astype(np.float32).ravel()), width)
    predicted = _id_lists(scored.probs >= np.asarray(thresholds)[None, :], label_ids)
    if scored.labels is None:
        labels = pa.nulls(n, pa.list_(pa.int32()))
    else:
        labels = _id_lists(scored.labels.astype(bool), label_ids)
    meta = {"label_ids": label_ids.tolist(), "thresholds": np.asarray(thresholds, dtype=float).tolist(),
            "source": source}
    table = pa.table({"image_id": pa.array(scored.ids.tolist(), pa.string()), "probs": probs,
                      "predicted": predicted, "labels": labels})
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, default=str).encode()})


def write_predictions(path: Path, scored: Scored, label_ids, thresholds, source: Dict[str, Any]) -> None:
    write_parquet_atomic(predictions_table(scored, label_ids, thresholds, source), Path(path), compression="zstd")


def read_meta(path: Path) -> Optional[Dict[str, Any]]:
    """The ``wdr_pipe`` metadata of a predictions file; None when there is no readable one."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowInvalid):
        return None


def read_predictions(path: Path, fix: str = "write it again") -> Tuple[Scored, Dict[str, Any]]:
    """A predictions file back as ``Scored`` (labels as multi-hot over its label ids) and its metadata; a
    ``UserError`` naming the file and ``fix`` when it does not read as one."""
    meta = read_meta(path) or {}
    try:
        t = pq.read_table(path)
        if "label_ids" not in meta or t.column_names[:4] != ["image_id", "probs", "predicted", "labels"]:
            raise ValueError("no predictions of wdr-pipe in it")
    except (OSError, ValueError, pa.ArrowException) as e:
        raise UserError(f"{path}: unreadable predictions ({first_line(e, 200)}); {fix}") from None
    ids = np.asarray(meta["label_ids"], dtype=np.int64)
    col = t.column("probs").combine_chunks()
    probs = col.values.to_numpy().reshape(len(col), len(ids)).astype(np.float32)
    labels = None
    lab = t.column("labels").combine_chunks()
    if len(lab) and lab.null_count < len(lab):
        offsets = lab.offsets.to_numpy()
        values = lab.values.to_numpy(zero_copy_only=False)
        labels = np.zeros(probs.shape, np.uint8)
        labels[np.repeat(np.arange(len(lab)), np.diff(offsets)), np.searchsorted(ids, values)] = 1
    image_ids = np.asarray(t.column("image_id").to_pylist(), dtype=object)
    return Scored(image_ids, probs, labels, reused=True), meta


# -- CSV files a person opens in a spreadsheet (per_label.csv, the submission, compare --format csv) ------
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """A text field that a spreadsheet shows as text: one that starts with ``= + - @``, a tab or a carriage
    return gets a leading ``'`` (OWASP's advice against CSV injection), and so does one that starts with
    ``'`` itself, so that ``read_cell`` gives the text back exactly. Numbers, and text that is a plain
    number such as ``-0.5``, stay as they are."""
    if isinstance(value, str) and (value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value)
                                   or value.startswith("'")):
        return "'" + value
    return value


def read_cell(text: str) -> str:
    """The text ``safe_cell`` was given."""
    return text[1:] if text.startswith("'") else text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as CSV by the csv module (a field with a comma, quote or line break stays one field), every text
    field through ``safe_cell``."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([safe_cell(h) for h in header])
    w.writerows([safe_cell(v) for v in row] for row in rows)
    return out.getvalue()


PER_LABEL_COLUMNS = ["label_id", "name", "task", "train_count", "support", "predicted", "precision", "recall", "f1",
                     "threshold", "average_precision", "precision_at_0.5", "recall_at_0.5", "f1_at_0.5"]


def per_label_csv(rows: List[Dict[str, Any]]) -> str:
    return csv_text(PER_LABEL_COLUMNS, ([f"{r[k]:.6g}" if isinstance(r[k], float) else r[k] for k in PER_LABEL_COLUMNS]
                                        for r in rows))


def _number(v: str):
    try:
        return float(v)
    except ValueError:
        return v


class EvalFolder:
    """``RUN/eval/<split>/``: the file names of an evaluation, and how each is written and read back."""

    def __init__(self, root):
        self.root = Path(root)
        self.metrics = self.root / "metrics.json"
        self.per_label = self.root / "per_label.csv"
        self.predictions = self.root / "predictions.parquet"
        self.saliency = self.root / "saliency.safetensors"
        self.report = self.root / "report.html"
        self.result = result_path(self.root)

    @property
    def split(self) -> str:
        return self.root.name

    def exists(self) -> bool:
        """An evaluation was written here (``metrics.json`` is written after the tables)."""
        return self.metrics.exists()

    def write_metrics(self, doc: Dict[str, Any]) -> None:
        write_json(self.metrics, doc)  # strict JSON: an undefined metric (NaN) is null

    def read_metrics(self) -> Dict[str, Any]:
        return read_json(self.metrics, f"evaluate the split {self.split} again")

    def uncommit(self) -> None:
        """Before an evaluation writes its files: the old commit marker goes, then the old report (a kill
        in between leaves no report of other figures, and no marker)."""
        for path in (self.result, self.report):
            path.unlink(missing_ok=True)

    def write_saliency(self, maps: Optional[Dict[str, Any]]) -> None:
        """The Grad-CAM arrays (``score.evaluate.saliency_examples``), or None: the old maps go."""
        if maps is None:
            self.saliency.unlink(missing_ok=True)
        else:
            write_tree(self.saliency, maps, "saliency")

    def read_saliency(self) -> Dict[str, Any]:
        return read_tree(self.saliency, "saliency", f"evaluate the split {self.split} again")

    def write_per_label(self, rows: List[Dict[str, Any]]) -> None:
        write_text_atomic(self.per_label, per_label_csv(rows))

    def read_per_label(self) -> List[Dict[str, Any]]:
        """The rows of ``per_label.csv`` as written: numbers as floats, ``name`` and ``task`` as text."""
        try:
            with open(self.per_label, newline="", encoding="utf-8") as f:
                return [{k: (_number(v) if k not in ("name", "task") else read_cell(v)) for k, v in row.items()}
                        for row in csv.DictReader(f)]
        except OSError as e:
            raise UserError(f"{self.per_label}: unreadable ({e.strerror}); evaluate the split {self.split} "
                            "again") from None


__all__ = ["EvalFolder", "FORMULA_START", "META_KEY", "PER_LABEL_COLUMNS", "Scored", "csv_text", "per_label_csv",
           "predictions_table", "read_cell", "read_meta", "read_predictions", "safe_cell", "write_predictions"]
