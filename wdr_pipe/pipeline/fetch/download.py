"""Download one image's bytes with bounds on everything.

``Downloader(cfg).get(urls)`` (``cfg``: ``configs.DownloadConfig``) tries each URL of an image in order and
returns ``(data, url)`` or raises :class:`DownloadFailed` with a status.
- keep-alive connections pooled per host (urllib3, the engine under requests,
  used directly: requests' own per-request work cost 0.3-0.5 ms per image);
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
from typing import Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.exceptions import (HTTPError, LocationParseError, MaxRetryError, NewConnectionError,
                               ProtocolError, TimeoutError as Urllib3Timeout)

from ..configs import DownloadConfig

RETRY_STATUS = {429, 500, 502, 503, 504}


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
        headers = {"User-Agent": cfg.user_agent}
        # redirects are followed by urllib3; every other retry is ours (backoff, Retry-After, deadline)
        self.retries = urllib3.Retry(total=cfg.max_redirects, connect=0, read=0, status=0, other=0,
                                     redirect=cfg.max_redirects, raise_on_redirect=True, raise_on_status=False)
        self.direct = urllib3.PoolManager(num_pools=64, maxsize=cfg.pool_size, headers=headers)
        self.proxied = {}
        for scheme, proxy in urllib.request.getproxies().items():  # HTTP(S)_PROXY from the environment
            if scheme in ("http", "https"):
                self.proxied[scheme] = urllib3.ProxyManager(proxy, num_pools=64, maxsize=cfg.pool_size,
                                                            headers=headers)

    def _pool(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        proxy = self.proxied.get(parts.scheme)
        if proxy is not None and not urllib.request.proxy_bypass(parts.hostname or ""):
            return proxy
        return self.direct

    def close(self) -> None:
        self.direct.clear()
        for pool in self.proxied.values():
            pool.clear()

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
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as e:  # e.g. "http://[::1/x": an unclosed IPv6 bracket
            raise DownloadFailed("bad_url", f"malformed URL ({e})") from e
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
        timeout = urllib3.Timeout(connect=min(self.cfg.connect_timeout, left), read=min(self.cfg.read_timeout, left))
        try:
            resp = self._pool(url).request("GET", url, preload_content=False, timeout=timeout, retries=self.retries)
        except MaxRetryError as e:  # only redirects are retried by urllib3, so this is about them or the cause
            if "redirect" in str(e.reason).lower():
                raise DownloadFailed("too_many_redirects", f"more than {self.cfg.max_redirects} redirects") from e
            raise self._transport_failure(e.reason or e, timeout.read_timeout) from e
        except LocationParseError as e:
            raise DownloadFailed("bad_url", _short(e)) from e
        except (HTTPError, OSError) as e:
            raise self._transport_failure(e, timeout.read_timeout) from e
        try:
            code = resp.status
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
            data = self._read_body(resp, deadline)
            resp.release_conn()  # body read in full: the connection goes back to the pool
            return data
        finally:
            if not resp.isclosed() and resp.connection is not None:
                resp.close()  # an unread body: drop the connection rather than drain it

    @staticmethod
    def _transport_failure(e: BaseException, read_timeout) -> "_Retryable":
        if isinstance(e, NewConnectionError):  # (a subclass of ConnectTimeoutError in urllib3 2)
            return _Retryable(DownloadFailed("connection_error", _short(e)))
        if isinstance(e, (Urllib3Timeout, TimeoutError)):
            return _Retryable(DownloadFailed("timeout", f"no answer within {read_timeout:.0f}s"))
        if isinstance(e, (ProtocolError, OSError, HTTPError)):
            return _Retryable(DownloadFailed("connection_error", _short(e)))
        return _Retryable(DownloadFailed("connection_error", f"{type(e).__name__}: {_short(e)}"))

    def _read_body(self, resp: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        chunks, size = [], 0
        try:
            while True:
                chunk = resp.read1(1 << 16, decode_content=True)  # what has arrived; never waits for a full chunk
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
        except (Urllib3Timeout, TimeoutError) as e:
            raise _Retryable(DownloadFailed("timeout", f"read timed out: {_short(e)}")) from e
        except (HTTPError, OSError) as e:  # protocol errors, resets mid-body
            raise _Retryable(DownloadFailed("connection_error", f"{type(e).__name__}: {_short(e)}")) from e
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
