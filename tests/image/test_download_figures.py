"""Download figure: cut, corrupted, truncated, 404 and stalled transfers against a real HTTP server
on 127.0.0.1. For each: whether anything unverified was left in the cache under a final name, and
whether the next attempt resumed (Range) and ended verified."""

from pathlib import Path

import pytest

from labctl.errors import ImageError
from labctl.image.cache import ImageCache
from labctl.image.download import fetch
from labctl.progress import NullProgress
from tests.httpserver import HTTPTestServer
from tests.image.test_download import BODY, FAST, sha512, url_spec
from tests.labenv import record_figure


def final_files(cache: ImageCache) -> list[Path]:
    """Image files under their final, digest-keyed names (records excluded)."""
    return sorted(p for p in cache.root.glob("sha512-*") if p.is_file() and p.suffix != ".json")


def verified(cache: ImageCache) -> bool:
    """Every file under a final name has the digest its name claims."""
    return all(sha512(p.read_bytes()) == p.name.split(".", 1)[0].removeprefix("sha512-") for p in final_files(cache))


SCENARIOS = {
    # name: (resource settings, expect success on the first fetch)
    "cut": ({"cuts": [100_000]}, True),  # cut mid-body, resumed with Range in the same fetch
    "corrupted": ({"body_override": b"x" * len(BODY)}, False),
    "truncated": ({"body_override": BODY[:150_000], "ranges": False}, False),
    "404": ({"status": 404}, False),
    "stalled": ({"stall_at": 120_000, "stall": 30.0}, True),  # read timeout, then resumed
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_download_fault(scenario, tmp_path):
    import requests

    settings, succeeds = SCENARIOS[scenario]
    settings = dict(settings)
    body = settings.pop("body_override", BODY)
    cache = ImageCache(tmp_path / "cache", labs_root=tmp_path / "labs")
    with HTTPTestServer() as server, requests.Session() as session:
        session.trust_env = False
        server.add("/disk.qcow2", body, **settings)
        spec = url_spec(server.url("/disk.qcow2"))
        try:
            fetch(spec, cache, session, NullProgress(), sleep=lambda _s: None, timeouts=FAST, retries=3)
            ok = True
        except ImageError:
            ok = False
        ranged = any("Range" in r.headers for r in server.requests)
    clean = verified(cache) and (ok or not final_files(cache))
    result = {"first_fetch_ok": ok, "nothing_unverified_cached": clean, "resumed_with_range": ranged}
    record_figure(f"downloads.{scenario}", result)
    assert clean
    assert ok == succeeds
    if scenario in ("cut", "stalled"):
        assert ranged and [sha512(p.read_bytes()) for p in final_files(cache)] == [sha512(BODY)]
