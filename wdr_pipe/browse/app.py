"""The web app: one static page and the JSON API under ``/api/`` (Starlette), over ``Answers``.

Read-only: no route writes a file. A request names images by id and split (looked up in the
catalog) and labels by id or name (looked up in the label space); no parameter reaches a path.
Every refusal is JSON ``{"error": "one line"}`` with a 4xx status; anything unexpected is a 500 with
the same shape (its traceback goes to the server's log, never to the client). Uploads are read up
to a cap (``predict``'s 20 MB) and decoded by ``imaging.process``, fetch's decoder with its
decompression-bomb guard. Responses carry a strict Content-Security-Policy (the page loads nothing
but its own files), and a server bound to loopback answers only requests addressed to loopback
(a page elsewhere cannot reach it through DNS rebinding). Grad-CAM, the one answer computed per
request for a stored image, runs one at a time and its last 64 maps are kept in memory.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
from importlib import resources
from typing import Callable, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import UserError
from . import adapter, search
from .answers import Answers
from .catalog import decode, overlay_png, thumbnail
from .search import Problem

log = logging.getLogger("wdr_pipe")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
SALIENCY_CACHE = 64
SALIENCY_WAIT = 60.0  # seconds a Grad-CAM request waits for the one before it


class Guard:
    """ASGI middleware: security headers on every response; with ``hosts``, a Host header outside them
    (a request not addressed to this loopback server) is refused."""

    def __init__(self, app, hosts: Optional[set] = None):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.hosts is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.lower() not in self.hosts:
                body = json.dumps({"error": f"Host {host[:80]!r} is not this server's address; open "
                                            "http://127.0.0.1:PORT/ (the server answers on loopback only)"}).encode()
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"application/json"), *HEADERS]})
                return await send({"type": "http.response.body", "body": body})

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"cache-control": "no-store"})


def _cached(request: Request, body: bytes, media: str, etag: str, immutable: bool) -> Response:
    headers = {"etag": etag, "cache-control": "private, max-age=31536000, immutable" if immutable else
               "private, no-cache"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media, headers=headers)


async def _body(request: Request, cap: int) -> bytes:
    """The request body, refused (413) past ``cap`` bytes before more is kept in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise Problem(413, f"upload: {int(declared) / 2**20:.1f} MB is over the cap of {cap // 2**20} MB; "
                           "send a smaller photo")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/"):
        raise Problem(415, "upload: send the photo's bytes as the request body, not a form "
                           "(curl --data-binary @photo.jpg)")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > cap:
            raise Problem(413, f"upload: over the cap of {cap // 2**20} MB; send a smaller photo")
    return bytes(data)


def _model_state(a: Answers) -> str:
    if a.loading is None or (a.loading.done.is_set() and not a.loading.error):
        return "ready"
    return "loading" if not a.loading.done.is_set() else f"failed: {a.loading.error}"


def create_app(a: Answers, *, allow_urls: bool = False, network: bool = False, address: str = "",
               loopback_only: bool = True, fetch_url: Callable[[str], bytes] = adapter.read_url) -> Starlette:
    """The app over ``a``; ``network``: bound to an address others can reach (the page says so)."""
    cap = adapter.max_upload_bytes()
    adapter.search_threads()
    files = {path: (resources.files(__package__).joinpath("static", name).read_bytes(), media)
             for path, (name, media) in STATIC.items()}
    etags = {path: '"' + hashlib.sha256(body).hexdigest()[:20] + '"' for path, (body, _) in files.items()}
    saliency_lock, maps_lock = threading.Semaphore(1), threading.Lock()
    saliency_maps: "collections.OrderedDict[tuple, bytes]" = collections.OrderedDict()

    async def page(request: Request) -> Response:
        body, media = files[request.url.path]
        return _cached(request, body, media, etags[request.url.path], immutable=False)

    async def info(request: Request) -> Response:
        c = a.catalog
        searchable = {x.split for x in a.indexes}
        return JSONResponse({
            "store": a.store.root.name if a.store is not None else None,
            "run": a.run, "model": _model_state(a),
            "embeddings": a.embeddings.describe() if a.embeddings is not None else None,
            "splits": [{"name": s, "images": int((c.split_of == i).sum()), "searchable": s in searchable,
                        "labelled": bool(c.labelled[c.split_of == i].any())} for i, s in enumerate(c.splits)],
            "images": len(c), "labels": len(a.labels), "network": network, "address": address,
            "allow_urls": allow_urls, "max_upload_bytes": cap, "per_page": search.PER_PAGE,
            "max_per_page": search.MAX_PER_PAGE, "max_depth": search.MAX_DEPTH, "notes": a.notes})

    async def labels(request: Request) -> Response:
        out = []
        for j in range(len(a.labels)):
            c = int(a.model_col[j])
            out.append({**search.label(a, j), "images": int(len(a.postings[j])), "model": c >= 0,
                        "threshold": round(float(a.thresholds[c]), 4) if c >= 0 else None})
        return JSONResponse({"labels": out})

    async def photo(request: Request) -> Response:
        url = request.query_params.get("url")
        if url is not None:
            if not allow_urls:
                raise Problem(403, "url: fetching URLs is off; start 'wdr-pipe browse' with --allow-urls, or "
                                   "upload the photo")
            data, what = await run_in_threadpool(fetch_url, url), "url"  # a UserError: 422 (on_user_error)
        else:
            data, what = await _body(request, cap), "upload"
        return JSONResponse(await run_in_threadpool(search.photo, a, data, request.query_params, what))

    def answer(fn):
        async def route(request: Request) -> Response:
            return JSONResponse(await run_in_threadpool(fn, a, request.query_params))
        return route

    async def image_bytes(request: Request) -> Response:
        g = search.find_image(a, request.query_params)
        sha = str(a.catalog.sha256[g] or "")
        immutable = bool(sha) and request.query_params.get("v") == sha[:16]
        if request.url.path.endswith("/thumb"):
            body = await run_in_threadpool(lambda: thumbnail(a.catalog.jpeg(g)))
            return _cached(request, body, "image/jpeg", f'"{sha[:32]}-t"', immutable)
        body = await run_in_threadpool(a.catalog.jpeg, g)
        return _cached(request, body, "image/jpeg", f'"{sha[:32]}"', immutable)

    def saliency_png(g: int, label_id: int) -> bytes:
        key = (g, label_id)
        with maps_lock:
            if key in saliency_maps:
                saliency_maps.move_to_end(key)
                return saliency_maps[key]
        if not saliency_lock.acquire(timeout=SALIENCY_WAIT):
            raise Problem(503, "saliency: busy with other maps; try again in a moment")
        try:
            jpeg = a.catalog.jpeg(g)
            seen, cam = a.model.grad_cam(decode(jpeg), jpeg, label_id)
            png = overlay_png(seen, cam)
        finally:
            saliency_lock.release()
        with maps_lock:
            saliency_maps[key] = png
            while len(saliency_maps) > SALIENCY_CACHE:
                saliency_maps.popitem(last=False)
        return png

    async def saliency(request: Request) -> Response:
        if not a.has_model:
            raise Problem(400, "saliency: no run was given to browse; start with --run")
        waiting = await run_in_threadpool(a.ready)
        if waiting:
            raise Problem(503, f"saliency: {waiting}")
        g = search.find_image(a, request.query_params)
        text = request.query_params.get("label", "")
        js = search.label_positions(a, text)
        if len(js) != 1 or a.model_col[js[0]] < 0:
            raise Problem(400, f"label={text[:40]!r}: pass one label the run predicts")
        if np.isnan(a.probs[g]).any():
            raise Problem(422, f"image {a.catalog.ids[g]!r}: the model could not read it (it failed to decode)")
        label_id = int(a.labels.ids[js[0]])
        png = await run_in_threadpool(saliency_png, g, label_id)
        etag = '"' + hashlib.sha256(f"{a.catalog.sha256[g]}:{label_id}".encode()).hexdigest()[:20] + '"'
        return _cached(request, png, "image/png", etag, immutable=False)

    async def on_problem(request: Request, exc: Problem) -> Response:
        return _error(exc.status, str(exc))

    async def on_user_error(request: Request, exc: UserError) -> Response:  # e.g. a photo's wide features failed
        return _error(422, str(exc))

    async def on_http(request: Request, exc: HTTPException) -> Response:
        what = {404: f"{request.url.path}: no such page or API route (see docs/browse.md)",
                405: f"{request.method} {request.url.path}: not allowed here"}.get(exc.status_code, exc.detail)
        return _error(exc.status_code, what)

    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("browse: %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server's log has the details")

    routes = [Route(p, page, methods=["GET", "HEAD"]) for p in STATIC] + [
        Route("/api/info", info), Route("/api/labels", labels),
        Route("/api/search/photo", photo, methods=["POST"]),
        Route("/api/search/like", answer(search.like)), Route("/api/search/tags", answer(search.tags)),
        Route("/api/image", answer(search.image)),
        Route("/api/image/thumb", image_bytes), Route("/api/image/jpeg", image_bytes),
        Route("/api/image/saliency", saliency)]
    app = Starlette(routes=routes, exception_handlers={Problem: on_problem, UserError: on_user_error,
                                                       HTTPException: on_http, Exception: on_error})
    hosts = set(LOOPBACK_NAMES) if loopback_only else None
    return Guard(app, hosts)


__all__ = ["CSP", "Guard", "create_app"]
