"""The listening socket and the uvicorn server of ``wdr-pipe browse``.

``passive_openmp()`` keeps idle OpenMP threads from spinning (before torch or faiss is imported).
``bind(host, port)`` opens the socket first, before anything slow runs, so a port in use or a host
that is not this machine's is one line naming the flag and the fix, not a traceback after minutes of
work. ``serve(app, sock)`` runs uvicorn on it in the foreground (Ctrl-C stops it); ``Background``
runs it in a thread (the tests, the benchmark, the screenshot).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from typing import Optional

from ..errors import UserError

log = logging.getLogger("wdr_pipe")


def passive_openmp() -> bool:
    """Make idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE`` unless set): torch and
    faiss each bring their own libgomp, and every thread that calls them (uvicorn's workers, the model's
    loader, the search) gets its own team. Spinning, those teams took the cores from each other: one
    photo's embedding took 0.2-2 s on the shared 2 cores instead of 27-35 ms. Only works before torch
    or faiss is imported; returns whether it was in time."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    early = not ({"torch", "faiss"} & set(sys.modules))
    if not early:
        log.info("browse: OMP_WAIT_POLICY set after torch or faiss was loaded; it applies to the next process")
    return early


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening (``port`` 0: any free one)."""
    if not host.strip():
        raise UserError("--host is empty; use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not a name or address this machine knows ({e.strerror}); use 127.0.0.1 "
                        "(this machine only), 0.0.0.0 (every interface) or one of this machine's addresses") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: already in use on {host} (another program, or another 'wdr-pipe "
                            "browse'); pass another --port, or --port 0 for any free one") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--host {host}: not an address of this machine ({e.strerror}); use 127.0.0.1, 0.0.0.0 "
                            "or one of this machine's addresses") from None
        if e.errno == errno.EACCES:
            raise UserError(f"--port {port}: not allowed for this user (ports under 1024 are reserved); pass a port "
                            "from 1024 to 65535") from None
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); pick another host or "
                        "port") from None
    return sock


def is_loopback(sock: socket.socket) -> bool:
    """Whether only this machine can reach the socket."""
    return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback


def address(sock: socket.socket) -> str:
    """The page's address: ``http://HOST:PORT/`` (this machine's name when bound to every interface)."""
    host, port = sock.getsockname()[:2]
    ip = ipaddress.ip_address(host.split("%")[0])
    if ip.is_unspecified:
        host = socket.gethostname()
    elif ip.version == 6:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _server(app, sock: socket.socket):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3, timeout_keep_alive=5)
    return uvicorn.Server(config)


def serve(app, sock: socket.socket) -> None:
    """Serve until Ctrl-C (the way to stop it: returns normally) or SIGTERM."""
    try:
        _server(app, sock).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then raised the signal again for us
        pass


class Background:
    """``with Background(app, sock) as url:`` the server runs in a thread until the block ends."""

    def __init__(self, app, sock: socket.socket):
        self.sock, self.server = sock, _server(app, sock)
        self.thread: Optional[threading.Thread] = None

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the browse server did not start")
            time.sleep(0.02)
        return address(self.sock)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.sock.close()


__all__ = ["Background", "address", "bind", "is_loopback", "passive_openmp", "serve"]
