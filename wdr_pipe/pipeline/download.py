"""Download one image's bytes with bounds on everything.

``Downloader(cfg).get(urls)`` tries each URL of an image in order and
returns ``(data, url)`` or raises :class:`DownloadFailed` with a status.
- keep-alive connections pooled per host (requests + urllib3);
- connection errors, timeouts, 5xx and 429 retried with exponential backoff
  and jitter, honouring ``Retry-After`` (capped); other 4xx are final;
- connect and read timeouts on every request, and an overall deadline per
  image checked between reads, so a server that drips bytes cannot hold a
  thread longer than ``deadline + read_timeout``;
- the body is capped while streaming (``max_bytes``);
- ``file://`` URLs read local files (the Clothing Attributes folder).
"""
from __future__ import annotations

import email.utils
import os
import random
import time
import urllib.request
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter

RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class DownloadConfig:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 60.0          # seconds per image, all URLs and retries included
    retries: int = 3                # extra attempts per URL on retryable failures
    backoff: float = 0.5            # first backoff; doubles each retry, plus jitter
    max_backoff: float = 10.0       # also caps Retry-After
    max_bytes: int = 20 * 2**20
    max_redirects: int = 5
    pool_size: int = 16
    user_agent: str = "wdr-pipe (+https://github.com/wdr-pipe)"


class DownloadFailed(Exception):
    def __init__(self, status: str, reason: str, url: Optional[str] = None):
        super().__init__(reason)
        self.status, self.url = status, url


class _Retryable(Exception):
    def __init__(self, failure: DownloadFailed, retry_after: Optional[float] = None):
        super().__init__(str(failure))
        self.failure, self.retry_after = failure, retry_after


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class Downloader:
    """One per task; thread-safe for concurrent ``get`` calls."""

    def __init__(self, cfg: DownloadConfig):
        self.cfg = cfg
        self.session = requests.Session()
        # Proxies from the environment are read once here; trust_env=False stops requests from
        # re-reading the environment and ~/.netrc on every request (a quarter of its overhead).
        self.session.proxies.update(urllib.request.getproxies())
        self.session.trust_env = False
        self.session.max_redirects = cfg.max_redirects
        self.session.headers["User-Agent"] = cfg.user_agent
        adapter = HTTPAdapter(pool_connections=32, pool_maxsize=cfg.pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def get(self, urls: Sequence[str]) -> Tuple[bytes, str]:
        """Bytes of the first URL that works; the last failure otherwise."""
        deadline = time.monotonic() + self.cfg.deadline
        last: Optional[DownloadFailed] = None
        for url in urls:
            try:
                return self._get_one(url, deadline), url
            except DownloadFailed as e:
                e.url = url
                last = e
            if time.monotonic() >= deadline:
                break
        raise last or DownloadFailed("bad_url", "the image has no URL")

    def _get_one(self, url: str, deadline: float) -> bytes:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "file":
            return self._read_file(url)
        if scheme not in ("http", "https"):
            raise DownloadFailed("bad_url", f"unsupported URL scheme {scheme or '(none)'!r}")
        attempt = 0
        while True:
            try:
                return self._attempt(url, deadline)
            except _Retryable as r:
                attempt += 1
                wait = min(self.cfg.max_backoff, self.cfg.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())
                if r.retry_after is not None:
                    wait = min(self.cfg.max_backoff, max(wait, r.retry_after))
                if attempt > self.cfg.retries or time.monotonic() + wait >= deadline:
                    raise r.failure
                time.sleep(wait)

    def _attempt(self, url: str, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DownloadFailed("timeout", f"deadline of {self.cfg.deadline:.0f}s passed")
        timeout = (min(self.cfg.connect_timeout, left), min(self.cfg.read_timeout, left))
        try:
            resp = self.session.get(url, stream=True, timeout=timeout)
        except requests.TooManyRedirects as e:
            raise DownloadFailed("too_many_redirects", f"more than {self.cfg.max_redirects} redirects") from e
        except (requests.ConnectTimeout, requests.ReadTimeout) as e:
            raise _Retryable(DownloadFailed("timeout", f"no answer within {timeout[1]:.0f}s")) from e
        except requests.ConnectionError as e:
            raise _Retryable(DownloadFailed("connection_error", _short(e))) from e
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, ValueError) as e:
            raise DownloadFailed("bad_url", _short(e)) from e
        with resp:
            code = resp.status_code
            if code != 200:
                failure = DownloadFailed(
                    "rate_limited" if code == 429 else "server_error" if code >= 500 else
                    "not_found" if code in (404, 410) else "http_error", f"HTTP {code}")
                if code in RETRY_STATUS:
                    raise _Retryable(failure, _retry_after(resp.headers.get("Retry-After")))
                raise failure
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self.cfg.max_bytes:
                raise DownloadFailed("too_large", f"Content-Length {length} is over {self.cfg.max_bytes} bytes")
            return self._read_body(resp, deadline)

    def _read_body(self, resp: requests.Response, deadline: float) -> bytes:
        chunks, size = [], 0
        raw = resp.raw
        try:
            while True:
                chunk = raw.read1(1 << 16, decode_content=True)  # what has arrived; never waits for a full chunk
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > self.cfg.max_bytes:
                    raise DownloadFailed("too_large", f"body is over {self.cfg.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise DownloadFailed("timeout", f"body still arriving after the {self.cfg.deadline:.0f}s deadline")
        except DownloadFailed:
            raise
        except Exception as e:  # urllib3 read timeouts, protocol errors, resets mid-body
            name = type(e).__name__
            if "Timeout" in name or "timed out" in str(e):
                raise _Retryable(DownloadFailed("timeout", f"read timed out: {_short(e)}")) from e
            raise _Retryable(DownloadFailed("connection_error", f"{name}: {_short(e)}")) from e
        return b"".join(chunks)

    def _read_file(self, url: str) -> bytes:
        path = unquote(urlsplit(url).path)
        try:
            if os.path.getsize(path) > self.cfg.max_bytes:
                raise DownloadFailed("too_large", f"file is over {self.cfg.max_bytes} bytes")
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise DownloadFailed("not_found", f"no such file {path}") from e
        except OSError as e:
            raise DownloadFailed("connection_error", f"cannot read {path}: {e.strerror}") from e


def _short(e: BaseException, limit: int = 200) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
