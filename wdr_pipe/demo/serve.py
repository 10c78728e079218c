"""A loopback image server with fault injection, for tests, the demo and benchmarks.

``ImageServer(root)`` serves the files under ``root`` over HTTP/1.1 with
keep-alive (so pooled clients reuse connections), caching file bytes in
memory::

    with ImageServer("data/") as srv:
        srv.url("images/train/1.jpg")              # http://127.0.0.1:PORT/images/train/1.jpg
        srv.fault_url("429", "images/train/1.jpg")  # .../fault/429/images/train/1.jpg
        srv.hits["/images/train/1.jpg"]             # requests seen for that path

Standalone: ``wdr-pipe serve ROOT --port N`` serves until Ctrl-C and prints its base URL.

Fault contract: ``GET /fault/<kind>/<relpath>`` for any file ``relpath``
(the file must exist, otherwise 404). Exact and deterministic:

- ``404``: always 404.
- ``500-then-ok``: the first request for that URL gets 500, later ones the
  file; ``?n=K`` makes the first K requests fail.
- ``429``: like ``500-then-ok`` but 429 with ``Retry-After: 1``.
- ``drip``: 200 with the file's Content-Length, then one byte every 0.5 s
  until the client disconnects (at most 60 s, then the connection closes).
- ``truncated``: 200 whose body is the first 60% of the file, with a
  Content-Length that matches what is sent.
- ``html``: an HTML page sent as ``Content-Type: image/jpeg``.
- ``oversized``: 200, ``image/jpeg``, no Content-Length,
  ``Connection: close``, 64 MiB body (the file's bytes, then zeros) streamed
  in chunks until the client stops reading.
- ``bomb``: a valid ~110 KB 1-bit PNG of 30000 x 30000 pixels, ``image/png``.
- ``bomb-jpeg``: a small JPEG whose SOF header claims 30000 x 30000 (the
  entropy data is that of an 8 x 8 image), ``image/jpeg``.
- ``redirect``: three 302s (``?hop=1``, ``?hop=2``, then ``/<relpath>``).
- ``redirect-loop``: 302s forever (``A -> A?b -> A -> ...``).
- ``reset``: the socket is closed with SO_LINGER 0 (a TCP RST), no response.
- ``slow-headers``: nothing for 30 s, then the file; gives up early when the
  client disconnects or the server closes.

"That URL" is the request target including the query string, so
``?n=2`` and ``?n=3`` count separately. ``hits`` counts requests per path
*without* the query string. ``reset()`` clears both. ``close()`` returns
within about a second even while drip or slow connections are open.
"""
from __future__ import annotations

import collections
import http.server
import io
import logging
import mimetypes
import select
import socket
import struct
import threading
import time
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional
from urllib.parse import parse_qs, quote, unquote

log = logging.getLogger("wdr_pipe")

FAULTS = ("404", "500-then-ok", "429", "drip", "truncated", "html", "oversized", "bomb", "bomb-jpeg",
          "redirect", "redirect-loop", "reset", "slow-headers")
DRIP_INTERVAL = 0.5
DRIP_MAX_S = 60.0
SLOW_HEADERS_S = 30.0
OVERSIZED_BYTES = 64 * 2**20
BOMB_SIDE = 30000
HTML = b"<!doctype html><html><head><title>Not found</title></head><body><h1>Sorry</h1></body></html>\n"
CACHE_MAX_BYTES = 2 * 2**30  # files beyond this are read from disk on every request
REASONS = {s.value: s.phrase for s in http.HTTPStatus}


@lru_cache(maxsize=1)
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid all-black 1-bit PNG of ``side`` x ``side`` pixels (about 110 KB for 30000)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    block = row * 1000
    parts = [z.compress(block) for _ in range(side // 1000)] + [z.compress(row * (side % 1000)), z.flush()]
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


@lru_cache(maxsize=1)
def bomb_jpeg(side: int = BOMB_SIDE) -> bytes:
    """An 8 x 8 JPEG whose SOF header is patched to claim ``side`` x ``side``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    i = 2
    while i < len(data):  # walk the marker segments to the first SOFn
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", side, side)  # height, width
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker in PIL's JPEG")  # pragma: no cover


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wdr-pipe-serve"
    timeout = 120  # an idle keep-alive connection is dropped after this
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, fmt, *args) -> None:  # no per-request stderr noise
        log.debug("serve: " + fmt, *args)

    # -- responses --------------------------------------------------------
    def _send(self, code: int, body: bytes = b"", ctype: str = "text/plain", extra: Optional[Dict] = None,
              length: Optional[int] = -1) -> None:
        """One write of status line, headers and body; ``length=None`` omits Content-Length."""
        lines = [f"HTTP/1.1 {code} {REASONS.get(code, '')}", f"Content-Type: {ctype}"]
        if length is not None:
            lines.append(f"Content-Length: {len(body) if length < 0 else length}")
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _send_file(self, rel: str, data: bytes) -> None:
        self._send(200, data, mimetypes.guess_type(rel)[0] or "application/octet-stream")

    # -- dispatch ---------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        target = self.path
        path, _, query = target.partition("?")
        self.server.count(self.server.hits, path)
        if path.startswith("/fault/"):
            kind, _, rel = path[len("/fault/"):].partition("/")
            return self._fault(kind, unquote(rel), target, query)
        rel = unquote(path.lstrip("/"))
        data = self.server.read(rel)
        if data is None:
            return self._send(404, b"not found\n")
        self._send_file(rel, data)

    def _fault(self, kind: str, rel: str, target: str, query: str) -> None:
        data = self.server.read(rel)
        if data is None or kind not in FAULTS:
            return self._send(404, b"not found\n")
        args = parse_qs(query)
        if kind == "404":
            return self._send(404, b"not found\n")
        if kind in ("500-then-ok", "429"):
            n = int(args.get("n", ["1"])[0])
            if self.server.count(self.server.attempts, target) <= n:
                if kind == "429":
                    return self._send(429, b"slow down\n", extra={"Retry-After": "1"})
                return self._send(500, b"server error\n")
            return self._send_file(rel, data)
        if kind == "truncated":
            return self._send(200, data[: int(len(data) * 0.6)], "image/jpeg")
        if kind == "html":
            return self._send(200, HTML, "image/jpeg")
        if kind == "bomb":
            return self._send(200, bomb_png(), "image/png")
        if kind == "bomb-jpeg":
            return self._send(200, bomb_jpeg(), "image/jpeg")
        if kind in ("redirect", "redirect-loop"):
            base = self.server.base_url + "/fault/" + kind + "/" + quote(rel)
            if kind == "redirect-loop":
                location = base if query == "b" else base + "?b"
            else:
                hop = int(args.get("hop", ["0"])[0])
                location = self.server.base_url + "/" + quote(rel) if hop >= 2 else f"{base}?hop={hop + 1}"
            return self._send(302, b"", extra={"Location": location})
        if kind == "reset":
            return self._reset()
        if kind == "drip":
            return self._drip(data)
        if kind == "oversized":
            return self._oversized(data)
        if kind == "slow-headers":
            if self._wait_for_disconnect(SLOW_HEADERS_S):
                self.close_connection = True
                return None
            return self._send_file(rel, data)

    def _reset(self) -> None:
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # drop the makefile reference so close() really closes the fd
        self.connection.close()  # with linger 0: RST

    def _wait_for_disconnect(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as the client hangs up or the server closes."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.server.closing.is_set():
                return True
            try:
                readable, _, _ = select.select([self.connection], [], [], 0.2)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return True
            except OSError:
                return True
        return False

    def _drip(self, data: bytes) -> None:
        self.close_connection = True
        self._send(200, ctype="image/jpeg", length=len(data))
        start = time.monotonic()
        for i in range(len(data)):
            if time.monotonic() - start > DRIP_MAX_S or self.server.closing.wait(DRIP_INTERVAL):
                return
            try:
                self.wfile.write(data[i:i + 1])
            except OSError:
                return

    def _oversized(self, data: bytes) -> None:
        self.close_connection = True
        self._send(200, ctype="image/jpeg", length=None)
        zeros, sent = b"\x00" * (256 * 1024), len(data)
        try:
            self.wfile.write(data)
            while sent < OVERSIZED_BYTES and not self.server.closing.is_set():
                sent += self.wfile.write(zeros[: OVERSIZED_BYTES - sent])
        except OSError:
            return


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root: Path, addr):
        self.root = Path(root).resolve()
        self.cache: Dict[str, bytes] = {}
        self.cached_bytes = 0
        self.lock = threading.Lock()
        self.hits: collections.Counter = collections.Counter()
        self.attempts: collections.Counter = collections.Counter()
        self.conns: set = set()
        self.accepted = 0
        self.closing = threading.Event()
        super().__init__(addr, _Handler)
        host, port = self.server_address[:2]
        self.base_url = f"http://{host}:{port}"

    def read(self, rel: str) -> Optional[bytes]:
        data = self.cache.get(rel)
        if data is None:
            path = (self.root / rel).resolve()
            if not rel or not path.is_relative_to(self.root) or not path.is_file():
                return None
            data = path.read_bytes()
            if self.cached_bytes + len(data) <= CACHE_MAX_BYTES:
                self.cache[rel] = data
                self.cached_bytes += len(data)
        return data

    def count(self, counter: collections.Counter, key: str) -> int:
        with self.lock:
            counter[key] += 1
            return counter[key]

    def track(self, conn: socket.socket, add: bool) -> None:
        with self.lock:
            if add:
                self.conns.add(conn)
                self.accepted += 1
            else:
                self.conns.discard(conn)

    def handle_error(self, request, client_address) -> None:  # a client hanging up is not an error
        log.debug("serve: error with %s", client_address, exc_info=True)

    def drop_connections(self) -> None:
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ImageServer:
    """Serve ``root`` over HTTP on ``host:port`` (0: a free port) from a background thread."""

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0):
        self._server = _Server(root, (host, port))
        self.base_url = self._server.base_url
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="wdr-pipe-serve", daemon=True)
        self._thread.start()

    @property
    def hits(self) -> collections.Counter:
        """A snapshot of the requests seen per path (no query string), e.g. ``hits["/fault/429/a.jpg"]``."""
        with self._server.lock:
            return collections.Counter(self._server.hits)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (keep-alive clients reuse one)."""
        return self._server.accepted

    def url(self, relpath: str) -> str:
        return f"{self.base_url}/{quote(str(relpath).lstrip('/'))}"

    def fault_url(self, kind: str, relpath: str, n: Optional[int] = None) -> str:
        """URL of ``relpath`` served with fault ``kind`` (see the module docstring)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULTS)}")
        url = f"{self.base_url}/fault/{kind}/{quote(str(relpath).lstrip('/'))}"
        return url if n is None else f"{url}?n={n}"

    def reset(self) -> None:
        """Forget hit counts and fault attempts (the file cache is kept)."""
        with self._server.lock:
            self._server.hits.clear()
            self._server.attempts.clear()

    def close(self) -> None:
        """Stop serving and drop open connections; returns within about a second."""
        if self._server.closing.is_set():
            return
        self._server.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()
        self._thread.join(timeout=1)

    def __enter__(self) -> "ImageServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_until_interrupted(root, host: str = "127.0.0.1", port: int = 0, on_ready=None) -> None:
    """Serve ``root`` until Ctrl-C (or SIGTERM); ``on_ready(base_url)`` is called once listening."""
    import signal

    def _stop(*_):
        raise KeyboardInterrupt

    root = Path(root)
    if not root.is_dir():
        from ..errors import UserError

        raise UserError(f"{root}: not a folder; pass the folder that holds the images (e.g. the synth OUT)")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    with ImageServer(root, host, port) as srv:
        if on_ready is not None:
            on_ready(srv.base_url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
