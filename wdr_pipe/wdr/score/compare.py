"""``wdr-pipe compare RUN...``: one table of runs, as the papers' tables are laid out.

Columns: the run (folder name), its kind, every setting that differs between
the runs of its kind (``config.json``'s settings; an ensemble always shows its
method and members), micro-F1 on the split at 0.5 and at the tuned
thresholds, macro-F1 (tuned), training images/s and time. Figures come from
``RUN/eval/<split>/metrics.json`` when the run was evaluated on that split,
else from what training wrote (``result.json``: micro-F1 only, from the best
model's validation predictions); the ``from`` column says which. Nothing is
recomputed.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from ...errors import UserError
from ..runs.evalfiles import csv_text
from ..runs.folder import RunFolder, open_run

FIGURES = ("micro_f1_at_0.5", "micro_f1_tuned", "macro_f1", "images_per_s", "seconds")


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    return "" if v is None else str(v)


def _figures(run: RunFolder, split: str) -> Dict[str, Any]:
    res = run.result_if_finished()
    details = res.details if res is not None else {}
    out = {"images_per_s": details.get("images_per_s") if run.kind == "train" else None,
           "seconds": res.seconds if res is not None else None}
    evaluation = run.evaluation(split)
    if evaluation.exists():
        doc = evaluation.read_metrics()
        return {**out, "micro_f1_at_0.5": doc["micro_f1_at_0.5"], "micro_f1_tuned": doc["micro_f1"],
                "macro_f1": doc["macro_f1"], "from": f"eval/{split}"}
    if split != run.settings.get("val_split", "validation"):
        return {**out, "micro_f1_at_0.5": None, "micro_f1_tuned": None, "macro_f1": None, "from": "-"}
    return {**out, "micro_f1_at_0.5": details.get("val_f1_at_0.5"), "micro_f1_tuned": details.get("val_f1_tuned"),
            "macro_f1": None, "from": "result.json" if details else "-"}


def compare_runs(paths: Sequence[str], split: str = "validation") -> Tuple[List[str], List[List[str]]]:
    """``(header, rows)`` of the comparison table, as text cells."""
    if not paths:
        raise UserError("no RUN given; pass the run folders to compare")
    runs = [open_run(p, flag="RUN") for p in paths]
    settings = [{k: _show(v) for k, v in r.settings.items() if k != "store"} for r in runs]
    differ: List[str] = []
    for kind in ("train", "ensemble"):  # a setting counts among the runs of its kind that have it
        mine = [s for r, s in zip(runs, settings) if r.kind == kind]
        always = ("method", "members") if kind == "ensemble" and mine else ()
        for k in sorted({k for s in mine for k in s}):
            if (k in always or len({s.get(k, "") for s in mine}) > 1) and k not in differ:
                differ.append(k)
    header = ["run", "kind", *differ, "micro-F1 @0.5", "micro-F1 tuned", "macro-F1", "train images/s", "time",
              "from"]
    if not any(r.evaluation(split).exists() or split == r.settings.get("val_split", "validation")
               for r in runs):
        raise UserError(f"--split {split!r}: none of the runs was evaluated on it (RUN/eval/{split}/) nor validated "
                        "on it in training; pass a split they were evaluated on, e.g. validation")
    rows = []
    for r, s in zip(runs, settings):
        f = _figures(r, split)
        num = lambda k, fmt: "" if f.get(k) is None else format(f[k], fmt)  # noqa: E731
        seconds = f.get("seconds")
        time_text = "" if seconds is None else (f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s")
        rows.append([r.name, r.kind, *[s.get(k, "") for k in differ], num("micro_f1_at_0.5", ".4f"),
                     num("micro_f1_tuned", ".4f"), num("macro_f1", ".4f"), num("images_per_s", ".0f"), time_text,
                     f["from"]])
    return header, rows


def format_table(header: List[str], rows: List[List[str]], fmt: str = "markdown") -> str:
    if fmt == "csv":
        return csv_text(header, rows)
    if fmt != "markdown":
        raise UserError(f"--format {fmt}: use markdown or csv")
    numeric = {i for i, h in enumerate(header) if h.startswith(("micro", "macro", "train"))}
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


__all__ = ["compare_runs", "format_table"]
