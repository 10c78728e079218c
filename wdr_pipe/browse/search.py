"""The page's questions, answered from ``Answers``: by photo, by stored image, by tags, and one image.

Every function takes checked values and returns plain JSON-ready dicts; a bad value is a ``Problem``
(an HTTP status and one line naming the parameter and the fix), never an exception of another kind.

- ``photo``: an uploaded photo -> ``imaging.process`` (fetch's decoder, resize and decompression-bomb
  guard, with the store's fetch settings) -> its predicted tags (the run's probabilities, on where they
  reach the run's tuned thresholds) and the most similar stored images (cosine similarity of the
  backbone's vectors, exact faiss search of every split's index, merged).
- ``like``: the same for a stored image, from its stored vector and stored probabilities.
- ``tags``: stored images ranked by the model's probability for the labels: AND scores
  ``prod p_j`` (all of them, if independent), OR ``1 - prod (1 - p_j)`` (any of them); ``match="true"``
  keeps only images whose true labels hold all (AND) or any (OR) of them, ranked the same way
  (by the number of matching labels without a run).
- ``image``: one stored image: true labels against predicted ones (missed and extra marked), every
  label's probability, its similar images.
"""
from __future__ import annotations

import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..imaging import ImageRejected, decode_rgb, process
from . import adapter
from .answers import Answers
from .catalog import Ambiguous, NotFound

PER_PAGE = 24
MAX_PER_PAGE = 100
MAX_DEPTH = 1000          # similarity results reachable by paging (faiss k)
MAX_TAGS = 20
TOP_TAGS = 10             # tags listed besides the ones predicted on


class Problem(Exception):
    """A request the page or the API refuses: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# -- parameters ------------------------------------------------------------------------------------
def integer(params, name: str, default: int, lo: int, hi: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise Problem(400, f"{name}={text[:40]!r}: not a whole number; use {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise Problem(400, f"{name}={value}: out of range; use {lo} to {hi}")
    return value


def paging(params, depth_limit: Optional[int] = None) -> tuple:
    page = integer(params, "page", 1, 1, 1_000_000)
    per_page = integer(params, "per_page", PER_PAGE, 1, MAX_PER_PAGE)
    if depth_limit is not None and page * per_page > depth_limit:
        raise Problem(400, f"page={page} with per_page={per_page}: similarity results go {depth_limit} deep; "
                           f"use page {max(1, depth_limit // per_page)} or less")
    return page, per_page


def choice(params, name: str, options: Sequence[str], default: str) -> str:
    value = params.get(name) or default
    if value not in options:
        raise Problem(400, f"{name}={value[:40]!r}: use one of {', '.join(options)}")
    return value


def split_filter(a: Answers, params) -> Optional[int]:
    """``in=SPLIT``: a search's results from that split only (``split=`` names a stored image's own split)."""
    split = params.get("in") or None
    if split is None:
        return None
    try:
        return a.catalog.split_index(split)
    except NotFound as e:
        raise Problem(400, f"in={split[:40]!r}: {e}") from None


def find_image(a: Answers, params) -> int:
    image_id = params.get("id")
    if not image_id:
        raise Problem(400, "id: missing; pass the image id (and split= when several splits have it)")
    try:
        return a.catalog.find(image_id, params.get("split") or None)
    except NotFound as e:
        raise Problem(404, f"{e}; pass an image id of the store") from None
    except Ambiguous as e:
        raise Problem(400, str(e)) from None


def label_positions(a: Answers, text: Optional[str]) -> List[int]:
    """``tags=`` as label positions: comma-separated label ids or names (names case-insensitive)."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise Problem(400, "tags: none given; pass label ids or names, comma-separated (GET /api/labels lists them)")
    if len(items) > MAX_TAGS:
        raise Problem(400, f"tags: {len(items)} labels; pass at most {MAX_TAGS}")
    by_name = {}
    for j, n in enumerate(a.labels.names):
        by_name.setdefault(n.casefold(), []).append(j)
    out = []
    for t in items:
        j = None
        if t.lstrip("-").isdigit():
            j = a.labels.position(int(t))
        if j is None:
            found = by_name.get(t.casefold(), [])
            if len(found) > 1:
                raise Problem(400, f"tags: label name {t[:60]!r} names {len(found)} labels; pass its id instead "
                                   f"({', '.join(str(int(a.labels.ids[k])) for k in found)})")
            j = found[0] if found else None
        if j is None:
            raise Problem(400, f"tags: unknown label {t[:60]!r}; pass a label id or name of GET /api/labels")
        if j not in out:
            out.append(j)
    return out


# -- pieces of an answer ---------------------------------------------------------------------------
def label(a: Answers, j: int) -> Dict[str, Any]:
    return {"id": int(a.labels.ids[j]), "name": a.labels.names[j], "task": a.labels.tasks[j]}


def image_urls(a: Answers, g: int) -> Dict[str, str]:
    q = urllib.parse.urlencode({"split": a.catalog.split_name(g), "id": a.catalog.ids[g],
                                "v": str(a.catalog.sha256[g] or "")[:16]})
    return {"thumb": f"/api/image/thumb?{q}", "jpeg": f"/api/image/jpeg?{q}"}


def tags_of(a: Answers, p: np.ndarray, top: Optional[int] = TOP_TAGS) -> List[Dict[str, Any]]:
    """Labels by probability: every one predicted on, then the next ones up to ``top`` (all: None)."""
    order = np.argsort(-p, kind="stable")
    on = p >= a.thresholds
    keep = [c for c in order if on[c]] + [c for c in order if not on[c]][:None if top is None else max(0, top - on.sum())]
    return [{**label(a, int(a.cols[c])), "p": round(float(p[c]), 4), "threshold": round(float(a.thresholds[c]), 4),
             "on": bool(on[c])} for c in keep]


def item(a: Answers, g: int, score: float) -> Dict[str, Any]:
    """One result card: the image, its score, its true labels and its predicted tags."""
    c = a.catalog
    out = {"image_id": c.ids[g], "split": c.split_name(g), "score": round(float(score), 4), "url": c.urls[g],
           **image_urls(a, g), "width": int(c.size[g, 0]), "height": int(c.size[g, 1]),
           "labels": [label(a, int(j)) for j in c.true_cols(g)] if c.labelled[g] else None}
    if a.has_model:
        p = a.probs[g]
        out["readable"] = not bool(np.isnan(p[0])) if len(p) else True
        on = a.on(g)
        on = on[np.argsort(-p[on], kind="stable")]
        out["predicted"] = [{**label(a, int(a.cols[k])), "p": round(float(p[k]), 4)} for k in on]
    return out


def _page(a: Answers, rows: np.ndarray, scores: np.ndarray, total: int, page: int, per_page: int) -> Dict[str, Any]:
    start = (page - 1) * per_page
    if total and start >= total:
        raise Problem(400, f"page={page}: past the last page ({-(-total // per_page)}) of {total} results")
    return {"total": int(total), "page": page, "per_page": per_page, "pages": int(-(-total // per_page)),
            "results": [item(a, int(g), float(s)) for g, s in zip(rows[start:start + per_page],
                                                                   scores[start:start + per_page])]}


def nearest(a: Answers, vector: np.ndarray, split: Optional[int], depth: int, exclude: Optional[int] = None):
    """(catalog rows, cosine similarities, how many there are) of the ``depth`` stored images nearest to
    ``vector``, best first: each split's index searched exactly, the results merged."""
    q = adapter.normalise(vector[None])
    searched = [x for x in a.indexes if split is None or x.split == a.catalog.splits[split]]
    total = sum(x.index.ntotal for x in searched)
    if exclude is not None and exclude in a.index_pos and a.index_pos[exclude][0] in searched:
        total -= 1
    rows, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for x in searched:
        s, r = x.index.search(q, int(min(x.index.ntotal, depth + 1)))
        keep = r[0] >= 0
        rows.append(x.rows[r[0][keep]])
        scores.append(s[0][keep])
    rows, scores = np.concatenate(rows), np.concatenate(scores)
    if exclude is not None:
        keep = rows != exclude
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:depth]
    return rows[order], scores[order], int(total)


def _similar(a: Answers, vector: np.ndarray, params, exclude: Optional[int] = None) -> Dict[str, Any]:
    page, per_page = paging(params, MAX_DEPTH)
    split = split_filter(a, params)
    t = time.perf_counter()
    rows, scores, total = nearest(a, vector, split, page * per_page, exclude)
    out = _page(a, rows, scores, min(total, MAX_DEPTH), page, per_page)  # paging reaches MAX_DEPTH deep
    out["seconds"] = {"search": round(time.perf_counter() - t, 4)}
    return out


_SEARCH = ThreadPoolExecutor(2, thread_name_prefix="browse-search")


# -- the questions ---------------------------------------------------------------------------------
def photo(a: Answers, data: bytes, params, what: str = "upload") -> Dict[str, Any]:
    """An uploaded photo's predicted tags and its most similar stored images. The search (memory-bound)
    runs in a thread beside the model's tags (compute-bound) once the photo's vector is there."""
    if not data:
        raise Problem(400, f"{what}: empty; send the photo's bytes (JPEG, PNG, WebP ...)")
    paging(params, MAX_DEPTH), split_filter(a, params)  # a bad parameter is said before any work
    waiting = a.ready()
    if waiting:
        raise Problem(503, f"photo search: {waiting}")
    t = t0 = time.perf_counter()
    try:
        jpeg, _, (w, h) = process(data, a.spec)
    except ImageRejected as e:
        raise Problem(422, f"{what}: {e} ({e.status}); send a photo (JPEG, PNG, WebP ...)") from None
    image = decode_rgb(jpeg)
    seconds = {"decode": time.perf_counter() - t}
    t = time.perf_counter()
    vector = a.embeddings.vectors([image])[0]
    seconds["embed"] = time.perf_counter() - t
    found = _SEARCH.submit(_similar, a, vector, params)
    query: Dict[str, Any] = {"kind": "photo", "width": w, "height": h}
    if a.has_model:
        t = time.perf_counter()
        shared = vector[None] if a.model.shares(a.embeddings.key) else None
        query["tags"] = tags_of(a, a.model.photo_probs([image], [jpeg], shared)[0])
        seconds["tags"] = time.perf_counter() - t
    out = found.result()
    seconds["total"] = time.perf_counter() - t0  # the search ran beside the tags: less than the sum
    out["seconds"] = {**{k: round(v, 4) for k, v in seconds.items()}, **out["seconds"]}
    return {"query": query, **out}


def like(a: Answers, params) -> Dict[str, Any]:
    """The stored images most similar to a stored one (its stored vector), and its stored tags."""
    g = find_image(a, params)
    where = a.index_pos.get(g)
    if where is None:
        raise Problem(404, f"image {a.catalog.ids[g]!r} ({a.catalog.split_name(g)}) has no embedding (its split "
                           "has none, or it failed to decode); search by photo instead")
    x, r = where
    query = {"kind": "image", **item(a, g, 1.0)}
    if a.has_model and query.get("readable", True):
        query["tags"] = tags_of(a, a.probs[g])
    return {"query": query, **_similar(a, x.index.reconstruct(int(r)), params, exclude=g)}


def tags(a: Answers, params) -> Dict[str, Any]:
    """Stored images ranked by the model's probability for the labels (or matched on their true labels)."""
    t = time.perf_counter()
    js = label_positions(a, params.get("tags"))
    mode = choice(params, "mode", ("and", "or"), "and")
    match = choice(params, "match", ("model", "true"), "model" if a.has_model else "true")
    split = split_filter(a, params)
    page, per_page = paging(params)
    n = len(a.catalog)
    if match == "model" and not a.has_model:
        raise Problem(400, "match=model: no run was given to browse; use match=true, or start with --run")
    score = predicted = None
    if a.has_model:
        cols = a.model_col[js]
        if match == "model" and (cols < 0).any():
            j = js[int(np.flatnonzero(cols < 0)[0])]
            raise Problem(400, f"tags: label {a.labels.text(j)!r} ({int(a.labels.ids[j])}) is not one the run "
                               "predicts; use match=true to find it in the true labels")
        if (cols >= 0).all():
            p = a.probs[:, cols]
            score = p.prod(axis=1) if mode == "and" else 1 - (1 - p).prod(axis=1)
            on = p >= a.thresholds[cols]
            predicted = on.all(axis=1) if mode == "and" else on.any(axis=1)
    keep = np.ones(n, bool) if match == "model" else np.zeros(n, bool)
    if match == "true":
        hits = np.zeros(n, np.int32)
        for j in js:
            hits[a.postings[j]] += 1
        keep = hits == len(js) if mode == "and" else hits > 0
        if score is None:
            score = hits / len(js)
    if score is None:
        score = np.zeros(n, np.float32)
    if split is not None:
        keep &= a.catalog.split_of == split
    keep &= ~np.isnan(score)
    rows = np.flatnonzero(keep)
    total = len(rows)
    depth = min(total, page * per_page)
    s = score[rows]
    if depth < total:
        part = np.argpartition(-s, depth - 1)[:depth]
        rows, s = rows[part], s[part]
    order = np.lexsort((rows, -s))
    out = _page(a, rows[order], s[order], total, page, per_page)
    out["query"] = {"kind": "tags", "tags": [label(a, j) for j in js], "mode": mode, "match": match,
                    "in": None if split is None else a.catalog.splits[split]}
    # of the results, how many the run predicts with all (AND) or any (OR) of the labels on
    out["predicted"] = None if predicted is None else int((predicted & keep).sum())
    out["seconds"] = {"rank": round(time.perf_counter() - t, 4)}
    return out


def image(a: Answers, params) -> Dict[str, Any]:
    """One stored image: true labels against predicted ones, every label's probability, similar images."""
    g = find_image(a, params)
    out = item(a, g, 1.0)
    out.pop("score")
    true = set(int(j) for j in a.catalog.true_cols(g)) if a.catalog.labelled[g] else None
    if a.has_model and out["readable"]:
        on = {int(a.cols[k]) for k in a.on(g)}
        rows = tags_of(a, a.probs[g], top=None)
        for r in rows:
            j = a.labels.position(r["id"])
            r["status"] = ("correct" if j in true and j in on else "missed" if j in true else
                           "extra" if j in on else "") if true is not None else ("predicted" if j in on else "")
        shown = [r for r in rows if r["status"] or r["on"]] + [r for r in rows if not r["status"] and not r["on"]][:TOP_TAGS]
        out["tags"] = shown
        if true is not None:
            missing = [j for j in sorted(true) if a.model_col[j] < 0]
            out["tags"] += [{**label(a, j), "p": None, "threshold": None, "on": False, "status": "missed"}
                            for j in missing]
    out["similar"] = None
    if g in a.index_pos:
        out["similar"] = like(a, {"id": a.catalog.ids[g], "split": a.catalog.split_name(g), "per_page": "12"})
        out["similar"].pop("query")
    return out


__all__ = ["MAX_DEPTH", "MAX_PER_PAGE", "PER_PAGE", "Problem", "image", "integer", "like", "paging", "photo",
           "tags", "tags_of"]
