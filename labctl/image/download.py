"""Verified, resumable image downloads into the image cache, and their progress output.

A download streams to ``partial/<name>.part`` while being hashed; a JSON sidecar
keeps the URL, expected digest, ETag, Last-Modified and size so that, after a cut,
an HTTP Range request can resume it, and a changed upstream file restarts it.
Only a file whose digest matches is renamed into the cache.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from labctl import __version__
from labctl.errors import ImageError
from labctl.image.cache import CachedImage, Digester, ImageCache, check_digest, write_json_atomic
from labctl.lab.catalog import ImageSpec, parse_checksums
from labctl.progress import NullProgress

CHUNK = 1 << 20
MAX_CHECKSUMS_BYTES = 4 << 20
BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0
MAX_RESTARTS = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for a connection, and for each read from it."""

    connect: float = 10.0
    read: float = 60.0


def make_session() -> requests.Session:
    """A session for image downloads; requests honours HTTP(S)_PROXY and NO_PROXY."""
    session = requests.Session()
    session.headers["User-Agent"] = f"labctl/{__version__}"
    return session


def fetch(
    spec: ImageSpec,
    cache: ImageCache,
    session: requests.Session,
    progress: NullProgress | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    retries: int = 4,
    timeouts: Timeouts = Timeouts(),
    refresh: bool = False,
) -> CachedImage:
    """Make sure the image ``spec`` names is in ``cache``; download or import it if not.

    An image with a known digest that is cached costs no request. One verified by a
    checksums file is taken from the cache by URL unless ``refresh`` (then the
    checksums file is fetched to learn the current digest). ``retries`` bounds the
    attempts in a row that make no progress.
    """
    net = _Net(session, progress or NullProgress(), sleep, retries, timeouts)
    try:
        if spec.path is not None:
            return _import_local(spec, cache)
        hit = cache.find(spec.algo, spec.digest) if spec.algo and spec.digest else None
        if hit is None and spec.digest is None and not refresh:
            hit = cache.find_by_url(str(spec.url))
        if hit is not None:
            return hit
        if spec.digest is None:
            spec = _fetch_checksums(spec, net)
        with cache.lock(spec.name):
            # Another labctl may have finished it while we waited for the lock.
            return cache.find(str(spec.algo), str(spec.digest)) or _download(spec, cache, net)
    except OSError as err:
        raise ImageError(f"cannot write to the image cache {cache.root}: {err.strerror or err}") from err


def _fetch_checksums(spec: ImageSpec, net: _Net) -> ImageSpec:
    """Read the digest of ``spec`` from its checksums file (SHA512SUMS)."""
    url = str(spec.checksums_url)

    def attempt() -> str:
        with net.get(url, {}) as resp:
            _check_status(resp, url)
            body = bytearray()
            with _network_errors(url):
                for chunk in resp.iter_content(64 << 10):
                    body += chunk
                    if len(body) > MAX_CHECKSUMS_BYTES:
                        raise ImageError(f"{url}: too large for a checksums file")
            return body.decode("utf-8", errors="replace")

    algo, digest = parse_checksums(net.retrying(url, attempt), spec.filename, url)
    if spec.algo and algo != spec.algo:
        raise ImageError(f"{url}: expected {spec.algo} checksums, found {algo}")
    return spec.with_digest(algo, digest)


def _import_local(spec: ImageSpec, cache: ImageCache) -> CachedImage:
    assert spec.path is not None
    expected = (spec.algo, spec.digest) if spec.algo and spec.digest else None
    hit = cache.find(*expected) if expected else cache.find_by_source(spec.path)
    if hit is not None:
        return hit
    if not spec.path.is_file():
        raise ImageError(f"image file not found: {spec.path}")
    with cache.lock(spec.name):
        return cache.add_file(
            spec.path, spec.name, format=spec.format, arch=spec.arch, expected=expected,
            cmdline=spec.cmdline, extra_files=_direct_boot_files(spec),
        )


def _direct_boot_files(spec: ImageSpec) -> dict[str, Path]:
    """The kernel and initrd an image boots with (direct kernel boot), kept in the cache beside it."""
    return {role: path for role, path in (("kernel", spec.kernel), ("initrd", spec.initrd)) if path}


def _download(spec: ImageSpec, cache: ImageCache, net: _Net) -> CachedImage:
    assert spec.url and spec.algo and spec.digest
    part = _Partial(cache.partial_path(spec.name))
    digests = net.retrying(spec.url, lambda: _attempt(spec, part, net))
    try:
        check_digest(digests, spec.algo, spec.digest, spec.url)
    except ImageError:
        part.discard()
        raise
    image = cache.commit(
        part.path, name=spec.name, digests=digests, format=spec.format, arch=spec.arch, url=spec.url,
        cmdline=spec.cmdline, extra_files=_direct_boot_files(spec),
    )
    part.meta_path.unlink(missing_ok=True)
    return image


def _attempt(spec: ImageSpec, part: _Partial, net: _Net) -> dict[str, str]:
    """One request: resume or start the transfer; return the digests of the whole file."""
    meta, size = part.load_meta(), part.size()
    offset = size if _resumable(meta, spec, size) else 0
    if offset == 0:
        part.discard()
    elif offset == meta.get("size"):  # complete, cut off before it was verified
        digester = Digester(spec.algo)
        digester.update_from_file(part.path)
        return digester.hexdigests()
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = meta.get("etag") or meta.get("last_modified")
        if validator:  # a server that sees the file changed sends all of it (200)
            headers["If-Range"] = validator
    with net.get(str(spec.url), headers) as resp:
        if offset and resp.status_code == 416:
            part.discard()
            raise _Restart("the server cannot resume this file; restarting")
        _check_status(resp, str(spec.url))
        offset = _reconcile(resp, offset, meta, part, spec, net.progress)
        return _receive(resp, offset, part, spec, net.progress)


def _resumable(meta: dict, spec: ImageSpec, size: int) -> bool:
    """Resume only the same download, and only with something to detect a change by."""
    return (
        meta.get("url") == spec.url
        and meta.get("digest") == spec.digest
        and any(meta.get(key) for key in ("etag", "last_modified", "size"))
        and 0 < size <= (meta.get("size") or float("inf"))
    )


def _reconcile(
    resp: requests.Response, offset: int, meta: dict, part: _Partial, spec: ImageSpec, progress: NullProgress
) -> int:
    """Decide where the body of ``resp`` goes: after ``offset`` (206) or from 0 (200)."""
    if resp.status_code == 206:
        if not offset:
            raise ImageError(f"{spec.url}: the server sent part of the file to a plain request")
        changed = _changed_upstream(resp, offset, meta)
        if changed:
            part.discard()
            raise _Restart(f"{changed}; restarting the download")
        return offset
    if offset:
        progress.note("the server sent the whole file; restarting the download")
    length = resp.headers.get("Content-Length")
    part.save_meta({
        "url": spec.url,
        "digest": spec.digest,
        "etag": resp.headers.get("ETag"),
        "last_modified": resp.headers.get("Last-Modified"),
        "size": int(length) if length and length.isdigit() else None,
    })
    return 0


def _changed_upstream(resp: requests.Response, offset: int, meta: dict) -> str | None:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
    if not match or int(match[1]) != offset:
        return "the server resumed at the wrong place"
    total = None if match[3] == "*" else int(match[3])
    if meta.get("size") is not None and total is not None and total != meta["size"]:
        return "the file changed upstream (size)"
    for header, key in (("ETag", "etag"), ("Last-Modified", "last_modified")):
        if resp.headers.get(header) and meta.get(key) and resp.headers[header] != meta[key]:
            return f"the file changed upstream ({header})"
    return None


def _receive(
    resp: requests.Response, offset: int, part: _Partial, spec: ImageSpec, progress: NullProgress
) -> dict[str, str]:
    """Append the body to the .part file, hashing it after the bytes already there."""
    digester = Digester(spec.algo)
    if offset:
        digester.update_from_file(part.path, offset)
    total = part.load_meta().get("size")
    progress.start(spec.name, total, offset)
    received = 0
    try:
        with part.path.open("ab" if offset else "wb") as out, _network_errors(str(spec.url)):
            for chunk in _body_chunks(resp):
                out.write(chunk)
                digester.update(chunk)
                received += len(chunk)
                progress.advance(len(chunk))
        if total is not None and offset + received != total:
            raise _Transient("the connection closed early")
    except _Transient as err:
        progress.stop()
        err.progressed = received > 0
        raise
    except BaseException:
        progress.stop()
        raise
    progress.finish()
    return digester.hexdigests()


def _body_chunks(resp: requests.Response) -> Iterator[bytes]:
    """The raw body as it arrives, so that a cut or a stall loses none of what came.

    ``iter_content`` fills a whole chunk before yielding and drops it on an error.
    """
    read1 = getattr(resp.raw, "read1", None)  # urllib3 >= 2.3
    if read1 is None:
        yield from resp.raw.stream(CHUNK, decode_content=False)
        return
    while chunk := read1(CHUNK, decode_content=False):
        yield chunk


@dataclass
class _Partial:
    """A ``.part`` file and its JSON sidecar."""

    path: Path

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def load_meta(self) -> dict:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def save_meta(self, meta: dict) -> None:
        write_json_atomic(self.meta_path, meta)

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)


class _Transient(Exception):
    """A failure worth another try (timeout, cut connection, 5xx)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.progressed = False


class _Restart(_Transient):
    """The partial file was discarded; start again at once."""


@dataclass
class _Net:
    session: requests.Session
    progress: NullProgress
    sleep: Callable[[float], None]
    retries: int
    timeouts: Timeouts = field(default_factory=Timeouts)

    def get(self, url: str, headers: dict[str, str]) -> requests.Response:
        with _network_errors(url):
            return self.session.get(
                url, headers=headers, stream=True, timeout=(self.timeouts.connect, self.timeouts.read)
            )

    def retrying(self, url: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds, backing off after transient failures."""
        failures = restarts = 0
        while True:
            try:
                return attempt()
            except _Restart as err:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise ImageError(f"{url}: {err.reason} (again)", "the file keeps changing upstream") from err
                self.progress.note(err.reason)
            except _Transient as err:
                # An attempt that moved the transfer on starts the count afresh.
                failures = 1 if err.progressed else failures + 1
                if failures > self.retries:
                    raise ImageError(
                        f"{url}: {err.reason}; gave up after {failures} attempt{'s' if failures > 1 else ''}",
                        "check the network and any HTTP(S)_PROXY, or try again later",
                    ) from err
                delay = min(BACKOFF_BASE * 2 ** (failures - 1), BACKOFF_MAX)
                self.progress.note(f"{err.reason}; retrying in {delay:g}s")
                self.sleep(delay)


def _check_status(resp: requests.Response, url: str) -> None:
    code = resp.status_code
    if code in (200, 206):
        return
    if code in (404, 410):
        raise ImageError(f"{url}: {code} not found", "check the URL; the image may have moved upstream")
    if code in (401, 403):
        raise ImageError(f"{url}: {code} access denied", "check the URL and any HTTP(S)_PROXY")
    if code == 429 or code >= 500:
        raise _Transient(f"server error {code} {resp.reason}")
    raise ImageError(f"{url}: unexpected HTTP status {code} {resp.reason}")


@contextlib.contextmanager
def _network_errors(url: str) -> Iterator[None]:
    """Translate requests errors: transient ones to _Transient, the rest to ImageError."""
    try:
        yield
    except requests.exceptions.SSLError as err:
        raise ImageError(f"{url}: TLS error: {_reason(err)}", "check the system CA certificates") from err
    except requests.exceptions.ProxyError as err:
        raise ImageError(f"{url}: proxy error: {_reason(err)}", "check HTTP(S)_PROXY and NO_PROXY") from err
    except requests.exceptions.Timeout as err:
        raise _Transient("timed out") from err
    except requests.exceptions.ConnectionError as err:
        if _is_dns_failure(err):
            host = urlsplit(url).hostname
            hint = "check DNS, the network or HTTP(S)_PROXY"
            raise ImageError(f"cannot resolve host {host} for {url}", hint) from err
        raise _Transient(_reason(err)) from err
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as err:
        raise _Transient("the connection was cut during the transfer") from err
    except urllib3.exceptions.ReadTimeoutError as err:
        raise _Transient("timed out") from err
    except requests.exceptions.RequestException as err:
        raise ImageError(f"{url}: {_reason(err)}") from err
    except urllib3.exceptions.HTTPError as err:
        raise _Transient(_reason(err)) from err


_DNS_MESSAGES = ("Failed to resolve", "Name or service not known", "nodename nor servname", "getaddrinfo failed")


def _is_dns_failure(err: Exception) -> bool:
    inner = _inner(err)
    name_error = getattr(urllib3.exceptions, "NameResolutionError", ())  # urllib3 >= 2 only
    return isinstance(inner, name_error) or any(text in str(inner) for text in _DNS_MESSAGES)


def _inner(err: Exception) -> object:
    inner = err.args[0] if err.args else err
    return getattr(inner, "reason", inner)  # MaxRetryError wraps the real cause


def _reason(err: Exception) -> str:
    inner = _inner(err)
    text = str(inner)
    if isinstance(inner, urllib3.exceptions.ReadTimeoutError) or "timed out" in text:
        return "timed out"
    # urllib3 prefixes "<HTTPConnection object at 0x...>: "; keep what follows.
    return text.split(">: ", 1)[-1]
