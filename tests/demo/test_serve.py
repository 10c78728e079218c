"""The loopback image server: files, keep-alive, every fault kind, clean shutdown.

Each fault is observed from a real client (requests or a raw socket).
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import requests
import simplejpeg
from click.testing import CliRunner

from wdr_pipe.cli import cli
from wdr_pipe.demo import synth
from wdr_pipe.demo.serve import ImageServer

REL = "images/train/1.jpg"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    (root / "images" / "train").mkdir(parents=True)
    g = synth.sample_garment(np.random.default_rng(0))
    (root / REL).write_bytes(synth.encode_jpeg(synth.draw_image(g, 120, 160, seed=1)))
    (root / "notes.txt").write_text("hello\n")
    return root


@pytest.fixture(scope="module")
def srv(root):
    with ImageServer(root) as s:
        yield s


@pytest.fixture(scope="module")
def data(root):
    return (root / REL).read_bytes()


def _raw_request(srv, path: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def _read_to_eof(sock: socket.socket):
    """Everything until the peer hangs up (None if it resets instead)."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        return None
    return got


def test_serves_files_with_type_and_length(srv, data):
    r = requests.get(srv.url(REL), timeout=5)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Type"] == "image/jpeg"
    assert int(r.headers["Content-Length"]) == len(data)
    t = requests.get(srv.url("notes.txt"), timeout=5)
    assert t.text == "hello\n" and t.headers["Content-Type"].startswith("text/plain")
    assert requests.get(srv.url("images/train/missing.jpg"), timeout=5).status_code == 404
    assert requests.head(srv.url(REL), timeout=5).headers["Content-Length"] == str(len(data))


def test_paths_outside_root_are_not_served(srv):
    sock = _raw_request(srv, "/../../etc/passwd")
    with sock:
        assert sock.recv(100).startswith(b"HTTP/1.1 404")


def test_keep_alive_reuses_one_connection_and_counts_hits(root, data):
    with ImageServer(root) as s, requests.Session() as session:
        for _ in range(5):
            assert session.get(s.url(REL), timeout=5).content == data
        assert s.connections == 1
        assert s.hits["/" + REL] == 5
        s.reset()
        assert s.hits["/" + REL] == 0


def test_fault_404(srv):
    assert requests.get(srv.fault_url("404", REL), timeout=5).status_code == 404
    assert requests.get(srv.fault_url("404", REL), timeout=5).status_code == 404


@pytest.mark.parametrize("kind,code", [("500-then-ok", 500), ("429", 429)])
def test_fails_first_then_serves_the_file(srv, data, kind, code):
    url = srv.fault_url(kind, REL)
    first = requests.get(url, timeout=5)
    assert first.status_code == code
    if code == 429:
        assert first.headers["Retry-After"] == "1"
    second = requests.get(url, timeout=5)
    assert second.status_code == 200 and second.content == data
    # ?n=2: two failures, counted separately from the plain URL
    url2 = srv.fault_url(kind, REL, n=2)
    assert [requests.get(url2, timeout=5).status_code for _ in range(3)] == [code, code, 200]
    assert srv.hits[f"/fault/{kind}/{REL}"] == 5


def test_drip_sends_the_length_then_one_byte_at_a_time(srv, data):
    with requests.get(srv.fault_url("drip", REL), stream=True, timeout=(2, 5)) as r:
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(data)
        assert r.raw.read(2) == data[:2]
    # a read timeout shorter than the drip interval fires
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(srv.fault_url("drip", REL), timeout=(2, 0.2))


def test_truncated_sends_sixty_percent_with_matching_length(srv, data):
    r = requests.get(srv.fault_url("truncated", REL), timeout=5)
    n = int(len(data) * 0.6)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == n
    assert r.content == data[:n]
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(r.content, strict=True)


def test_html_disguised_as_jpeg(srv):
    r = requests.get(srv.fault_url("html", REL), timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert r.content.lower().startswith(b"<!doctype html")


def test_oversized_streams_without_length_until_the_client_stops(srv, data):
    with requests.get(srv.fault_url("oversized", REL), stream=True, timeout=(2, 5)) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
        assert "Content-Length" not in r.headers and r.headers["Connection"] == "close"
        got = b""
        for chunk in r.iter_content(1 << 20):
            got += chunk
            if len(got) >= 8 << 20:
                break
    assert got.startswith(data) and len(got) >= 8 << 20


def test_bomb_is_a_small_valid_png_claiming_30000_square(srv):
    r = requests.get(srv.fault_url("bomb", REL), timeout=10)
    body = r.content
    assert r.headers["Content-Type"] == "image/png" and len(body) < 200_000
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and body[12:16] == b"IHDR"
    width, height, depth = struct.unpack(">IIB", body[16:25])
    assert (width, height, depth) == (30000, 30000, 1)
    # the IDAT stream really inflates to 30000 rows of (filter byte + 3750 bytes)
    idat_len = struct.unpack(">I", body[33:37])[0]
    assert body[37:41] == b"IDAT"
    z, total, rest = zlib.decompressobj(), 0, body[41:41 + idat_len]
    while rest:
        total += len(z.decompress(rest, 1 << 24))
        rest = z.unconsumed_tail
    assert total == 30000 * 3751


def test_bomb_jpeg_header_claims_30000_square(srv):
    r = requests.get(srv.fault_url("bomb-jpeg", REL), timeout=5)
    assert r.headers["Content-Type"] == "image/jpeg" and len(r.content) < 10_000
    assert simplejpeg.decode_jpeg_header(r.content)[:2] == (30000, 30000)


def test_redirect_chain_of_three_ends_at_the_file(srv, data):
    r = requests.get(srv.fault_url("redirect", REL), timeout=5)
    assert r.status_code == 200 and r.content == data
    assert [h.status_code for h in r.history] == [302, 302, 302]
    assert r.url == srv.url(REL)


def test_redirect_loop_never_ends(srv):
    with pytest.raises(requests.TooManyRedirects):
        requests.get(srv.fault_url("redirect-loop", REL), timeout=5)
    r = requests.get(srv.fault_url("redirect-loop", REL), timeout=5, allow_redirects=False)
    nxt = requests.get(r.headers["Location"], timeout=5, allow_redirects=False)
    assert nxt.headers["Location"] == srv.fault_url("redirect-loop", REL)


def test_reset_closes_without_a_response(srv):
    sock = _raw_request(srv, "/fault/reset/" + REL)
    with sock, pytest.raises(ConnectionResetError):
        sock.recv(100)
    with pytest.raises(requests.ConnectionError):
        requests.get(srv.fault_url("reset", REL), timeout=5)


def test_slow_headers_trips_a_read_timeout(srv):
    with pytest.raises(requests.ReadTimeout):
        requests.get(srv.fault_url("slow-headers", REL), timeout=(2, 0.5))


def test_unknown_fault_kind(srv):
    with pytest.raises(ValueError, match="unknown fault kind"):
        srv.fault_url("nope", REL)
    assert requests.get(srv.base_url + "/fault/nope/" + REL, timeout=5).status_code == 404


def test_close_returns_with_hanging_connections(root):
    s = ImageServer(root)
    drip = _raw_request(s, "/fault/drip/" + REL)
    slow = _raw_request(s, "/fault/slow-headers/" + REL)
    idle = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    assert drip.recv(12) == b"HTTP/1.1 200"
    deadline = time.monotonic() + 10
    while s.connections < 3 and time.monotonic() < deadline:  # all three accepted
        time.sleep(0.01)
    start = time.monotonic()
    s.close()
    # a hang guard, not a speed check: without the shutdown this would take 30-60 s
    assert time.monotonic() - start < 10
    for sock in (drip, slow, idle):
        with sock:  # the server hung up: EOF (or a reset) instead of a hang
            assert _read_to_eof(sock) is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2)
    s.close()  # idempotent


def test_concurrent_clients_all_get_the_file(root, data):
    with ImageServer(root) as s:
        results = []

        def fetch():
            with requests.Session() as session:
                results.extend(session.get(s.url(REL), timeout=5).content == data for _ in range(10))

        threads = [threading.Thread(target=fetch) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [True] * 80 and s.hits["/" + REL] == 80


def test_wdr_pipe_serve_serves_until_terminated(root, data):
    proc = subprocess.Popen([sys.executable, "-m", "wdr_pipe.cli", "serve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving ")
        base = line.split(" at ")[1].split()[0]
        assert requests.get(f"{base}/{REL}", timeout=5).content == data
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_cli_synth_writes_images_and_fgvc5_json(tmp_path):
    out = tmp_path / "data"
    res = CliRunner().invoke(cli, ["synth", str(out), "--train", "2", "--validation", "1", "--test", "1",
                                   "--base-url", "http://127.0.0.1:9999"])
    assert res.exit_code == 0, res.output
    train = json.loads((out / "train.json").read_text())
    assert [im["url"] for im in train["images"]] == [f"http://127.0.0.1:9999/images/train/{i}.jpg" for i in (1, 2)]
    assert len(train["annotations"]) == 2 and "annotations" not in json.loads((out / "test.json").read_text())
    assert (out / "images" / "test" / "1.jpg").stat().st_size > 0
    assert CliRunner().invoke(cli, ["synth", str(out), "--train", "0", "--validation", "0",
                                    "--test", "0"]).exit_code != 0


def test_cli_serve_rejects_a_missing_folder(tmp_path):
    res = CliRunner().invoke(cli, ["serve", str(tmp_path / "nope"), "--port", "0"])
    assert res.exit_code == 1 and "not a folder" in res.output
