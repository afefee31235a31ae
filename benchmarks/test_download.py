"""6. Image download from a local HTTP server (tests/httpserver.py, in a process of its own, on
127.0.0.1) with hashing on: labctl's fetch (SHA-512 as the bytes arrive, then the verified file
committed to its cache) against `curl -o`, interleaved; `curl -o` followed by `sha512sum` for context
(what a script that verifies would do)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import pytest
import requests

from benchmarks.measure import REPO, Results, environ, interleaved
from labctl.image.cache import ImageCache
from labctl.image.download import fetch
from labctl.lab.catalog import ImageSpec
from tests.harness.procs import Started

SIZE = 256 << 20
ROUNDS = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A 256 MiB file of pseudo-random bytes, its SHA-512, and its URL on the server process."""
    work = tmp_path_factory.mktemp("download")
    body = work / "image.qcow2"
    digest = hashlib.sha512()
    with body.open("wb") as out:
        block = hashlib.sha256(b"labctl").digest() * (1 << 15)  # 1 MiB, incompressible enough for the test
        for index in range(SIZE // len(block)):
            chunk = index.to_bytes(8, "big") + block[8:]
            out.write(chunk)
            digest.update(chunk)
    server = Started([sys.executable, "-m", "benchmarks.serve_file", str(body)], work / "server.log")
    try:
        with environ({"PYTHONPATH": str(REPO)}):  # `-m benchmarks.…` from any working directory
            server.start()
        server.wait_until(lambda: server.tail(1).startswith("http://"), 30, "its URL")
        url = server.tail(1).strip()
        yield work, url, digest.hexdigest()
    finally:
        server.stop()


def test_download_labctl_vs_curl(served, results: Results):
    work, url, sha512 = served
    spec = ImageSpec(name="bench", url=url, algo="sha512", digest=sha512)
    cache_root, out = work / "cache", work / "curl.out"

    def clean() -> None:
        shutil.rmtree(cache_root, ignore_errors=True)
        out.unlink(missing_ok=True)

    def labctl_fetch() -> None:
        with requests.Session() as session:
            session.trust_env = False  # never a proxy: only 127.0.0.1
            fetch(spec, ImageCache(cache_root, labs_root=work / "labs"), session)

    curl = ["curl", "-sS", "--fail", "--noproxy", "*", "-o", str(out), url]
    contenders = {
        "labctl fetch (SHA-512 on the fly, verified, cached)": labctl_fetch,
        "curl -o": lambda: subprocess.run(curl, check=True, timeout=300),
        "curl -o, then sha512sum": lambda: (subprocess.run(curl, check=True, timeout=300),
                                           subprocess.run(["sha512sum", str(out)], check=True, timeout=300,
                                                          capture_output=True)),
    }
    clean()
    labctl_fetch()  # warm: the served file in the page cache on both sides
    samples = interleaved(contenders, ROUNDS, setup=clean)
    clean()
    labctl, curl_only = samples[next(iter(contenders))], samples["curl -o"]
    results.record("download", bytes=SIZE, samples=samples,
                   throughput_vs_curl=curl_only.wall.median / labctl.wall.median,
                   mib_per_s={name: SIZE / 2**20 / timing.wall.median for name, timing in samples.items()},
                   command=" ".join([*curl[:-3], "-o", "FILE", "URL"]))
