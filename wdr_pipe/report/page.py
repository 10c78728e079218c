"""The report's HTML: one page, inline style, figures as data URIs, no script and no network."""
from __future__ import annotations

import base64
import datetime
import html
from typing import Any, Dict, List

STYLE = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 24px auto;
       max-width: 1180px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #d0d7de; }
.meta { color: #57606a; margin-top: 0; } .note { color: #9a6700; background: #fff8c5; padding: 6px 10px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #d0d7de; padding: 3px 8px; }
th { background: #f6f8fa; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; } figcaption { color: #57606a; font-size: 13px; }
.labels td { font-size: 12.5px; padding: 1px 6px; } .low { background: #ffebe9; }
"""

HEADLINE = (("micro_f1", "micro F1 (FGVC5 metric)"), ("micro_precision", "micro precision"),
            ("micro_recall", "micro recall"), ("macro_f1", "macro F1"), ("macro_precision", "macro precision"),
            ("macro_recall", "macro recall"), ("mean_average_precision", "mean average precision"),
            ("subset_accuracy", "subset accuracy (whole row right)"),
            ("hamming_accuracy", "Hamming accuracy (VGG-16 paper's accuracy)"))

CAPTIONS = {
    "frequency": ("Where it fails", "Bars: training images per label (log scale), labels sorted by frequency; lines: "
                  "precision and recall on this split at the tuned thresholds. Shaded: the WDR paper's buckets, "
                  "labels with over 2,000 and under 20 training images."),
    "cooccurrence": ("Label co-occurrence", "Training images carrying both labels, log scale; the diagonal is each "
                     "label's count. Lines separate the label map's tasks."),
    "curves": ("Training curves", "From metrics.jsonl: mean training loss since the previous evaluation, validation "
               "loss, learning rate and validation micro-F1 at 0.5."),
    "thresholds": ("Thresholds", "The per-label decision threshold tuned on the validation split (Fan and Lin's "
                   "cyclic optimisation) against the label's training frequency; crosses kept the global threshold."),
    "saliency": ("Saliency", "Grad-CAM of the model's last feature map for the top-scoring labels of a few images; "
                 "green titles are true labels, red false ones."),
    "failures": ("Fetch summary", "Images of the store's index that could not be stored, by reason."),
}


def _e(x) -> str:
    return html.escape(str(x))


def _num(v, fmt=".4f") -> str:
    return "" if v is None or v == "" else (format(v, fmt) if isinstance(v, (int, float)) else _e(v))


def _figure(name: str, png: bytes) -> str:
    title, caption = CAPTIONS[name]
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{name}"><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _section(name: str, figs: Dict[str, bytes], notes: Dict[str, str], extra: str = "") -> str:
    title = CAPTIONS[name][0]
    body = _figure(name, figs[name]) if name in figs else f'<p class="note">{_e(notes.get(name, "not available"))}</p>'
    return f"<h2>{_e(title)}</h2>{body}{extra}"


def render(run, split: str, metrics: Dict[str, Any], rows: List[Dict[str, Any]], figs: Dict[str, bytes],
           notes: Dict[str, str], never: List[str], fetch_failures: Dict[str, Dict[str, int]]) -> str:
    at, tuned = metrics["at_0.5"], metrics["tuned"]
    head = "".join(f"<tr><td>{_e(label)}</td><td class=n>{_num(at.get(k))}</td><td class=n>{_num(tuned.get(k))}</td>"
                   f"</tr>" for k, label in HEADLINE)
    meta = (f"{_e(run.kind)} run <code>{_e(run.root)}</code>; split <b>{_e(split)}</b>, {metrics['images']:,} images, "
            f"{metrics['labels']} labels; checkpoint {_e(metrics.get('checkpoint'))}, TTA {_e(metrics.get('tta'))}; "
            f"thresholds: {_e(metrics.get('thresholds'))}; store <code>{_e(metrics.get('store'))}</code>; "
            f"made {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    never_html = (f"<p><b>Labels never predicted</b> ({len(never)}, with positives in this split): "
                  f"{_e('; '.join(never))}</p>" if never else "<p>Every label with positives here was predicted at "
                                                               "least once.</p>")
    fail_rows = "".join(f"<tr><td>{_e(s)}</td><td>{_e(k)}</td><td class=n>{v:,}</td></tr>"
                        for s, d in fetch_failures.items() for k, v in d.items())
    fail_table = (f"<table><tr><th>split</th><th>reason</th><th>images</th></tr>{fail_rows}</table>"
                  if fail_rows else "")
    cols = ("label_id", "name", "task", "train_count", "support", "predicted", "precision", "recall", "f1",
            "threshold", "average_precision", "f1_at_0.5")
    label_rows = "".join(
        "<tr" + (' class="low"' if r["support"] and not r["predicted"] else "") + ">" +
        "".join(f"<td class=n>{_num(r[c], '.3f' if isinstance(r[c], float) and c not in ('label_id', 'train_count', 'support', 'predicted') else '.0f')}</td>"
                if isinstance(r[c], (int, float)) else f"<td>{_e(r[c])}</td>" for c in cols) + "</tr>"
        for r in sorted(rows, key=lambda r: -r["train_count"]))
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>wdr-pipe report: {_e(run.name)} on {_e(split)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(run.name)}: {_e(split)}</h1><p class=meta>{meta}</p>",
        f"<h2>Headline</h2><table><tr><th>metric</th><th>at 0.5</th><th>tuned</th></tr>{head}</table>",
        _section("frequency", figs, notes, never_html),
        _section("cooccurrence", figs, notes),
        _section("curves", figs, notes),
        _section("thresholds", figs, notes),
        _section("saliency", figs, notes),
        _section("failures", figs, notes, fail_table),
        "<h2>Per label</h2><p>Sorted by training frequency; red rows have positives here but were never predicted.</p>",
        "<table class=labels><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + f"</tr>{label_rows}</table>",
        "</body></html>\n",
    ]
    return "".join(parts)


__all__ = ["render"]
