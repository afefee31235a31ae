"""Downloads against a real HTTP server on 127.0.0.1: resume, verification, errors, progress."""

import hashlib
import io
import random
from pathlib import Path

import pytest
import requests
import urllib3.exceptions
from click.testing import CliRunner

from labctl.cli.image import ImageEnv, image
from labctl.errors import ImageError
from labctl.image.cache import ImageCache
from labctl.image.download import Timeouts, fetch
from labctl.lab.catalog import ImageSpec, parse_catalog
from labctl.progress import BarProgress, LineProgress, NullProgress, make_progress
from tests.httpserver import HTTPTestServer

BODY = random.Random(1).randbytes(300_000)
OTHER = random.Random(2).randbytes(250_000)
FAST = Timeouts(connect=5, read=5)

pytestmark = pytest.mark.races  # a real HTTP server in a thread, timeouts and stalls


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


@pytest.fixture
def server():
    with HTTPTestServer() as srv:
        yield srv


@pytest.fixture
def session():
    with requests.Session() as sess:
        sess.trust_env = False  # never a proxy from the environment: only 127.0.0.1
        yield sess


@pytest.fixture
def cache(tmp_path):
    return ImageCache(tmp_path / "cache", labs_root=tmp_path / "labs")


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def get(cache, session, sleeps):
    """fetch() with instant, recorded back-off."""

    def run(spec, **kwargs):
        kwargs.setdefault("timeouts", FAST)
        return fetch(spec, cache, session, NullProgress(), sleep=sleeps.append, **kwargs)

    return run


def url_spec(url: str, data: bytes = BODY, name: str = "disk") -> ImageSpec:
    return ImageSpec(name=name, url=url, algo="sha512", digest=sha512(data))


def leftovers(cache: ImageCache) -> list[str]:
    return sorted(p.name for p in cache.partial_dir.glob("*") if not p.name.endswith(".lock"))


def test_fresh_download_is_verified_and_cached(server, cache, get):
    url = server.add("/disk.qcow2", BODY)
    cached = get(url_spec(url))
    assert cached.path.read_bytes() == BODY
    assert cached.digest == f"sha512:{sha512(BODY)}"
    assert cached.path.name == f"sha512-{sha512(BODY)}.qcow2"
    assert (cached.name, cached.url, cached.size) == ("disk", url, len(BODY))
    assert server.ranges_seen("/disk.qcow2") == [None]
    assert leftovers(cache) == []


def test_resume_after_cut_sends_range_and_verifies(server, cache, get, sleeps):
    url = server.add("/disk.qcow2", BODY, cuts=[100_000])
    cached = get(url_spec(url))
    assert cached.path.read_bytes() == BODY
    first, second = server.seen("/disk.qcow2")
    assert "Range" not in first.headers
    assert second.headers["Range"] == "bytes=100000-"
    assert second.headers["If-Range"] == '"v1"'
    assert sleeps == [1.0]
    assert leftovers(cache) == []


def test_interrupted_run_is_resumed_by_the_next_one(server, cache, get):
    url = server.add("/disk.qcow2", BODY, cuts=[70_000, 10])
    with pytest.raises(ImageError, match="connection"):
        get(url_spec(url), retries=0)
    assert leftovers(cache) == ["disk.part", "disk.part.json"]
    assert get(url_spec(url)).path.read_bytes() == BODY
    assert server.ranges_seen("/disk.qcow2") == [None, "bytes=70000-", "bytes=70010-"]


def test_server_without_ranges_restarts_cleanly(server, get):
    url = server.add("/disk.qcow2", BODY, cuts=[100_000], ranges=False)
    assert get(url_spec(url)).path.read_bytes() == BODY
    assert server.ranges_seen("/disk.qcow2") == [None, "bytes=100000-"]


@pytest.mark.parametrize(
    ("if_range", "validators", "extra_requests"),
    [
        (True, {"etag": '"v2"'}, 0),  # the server sees If-Range fail: 200, restart in place
        (False, {"etag": '"v2"'}, 1),  # the server ignores If-Range: we see the new ETag
        (False, {"etag": None, "last_modified": "Tue, 02 Jan 2024 00:00:00 GMT"}, 1),
        (False, {"etag": None, "last_modified": None}, 1),  # only the size tells
    ],
)
def test_changed_upstream_file_restarts(server, cache, get, if_range, validators, extra_requests):
    # The part holds 100 kB of the old file; upstream now has OTHER, which we expect.
    url = server.add("/disk.qcow2", BODY, cuts=[100_000], etag='"v1"')
    with pytest.raises(ImageError):
        get(url_spec(url, OTHER), retries=0)
    server.add("/disk.qcow2", OTHER, if_range=if_range, **validators)
    cached = get(url_spec(url, OTHER))
    assert cached.path.read_bytes() == OTHER
    ranges = server.ranges_seen("/disk.qcow2")
    assert ranges[1] == "bytes=100000-"
    assert ranges[2:] == [None] * extra_requests
    assert leftovers(cache) == []


def test_wrong_digest_caches_nothing_and_names_both_digests(server, cache, get):
    url = server.add("/disk.qcow2", BODY)
    with pytest.raises(ImageError) as err:
        get(url_spec(url, OTHER))
    message = str(err.value)
    assert url in message and sha512(OTHER) in message and sha512(BODY) in message
    assert cache.images() == []
    assert list(cache.root.glob("sha512-*")) == []
    assert leftovers(cache) == []


def test_checksums_file_gives_the_digest(server, get):
    url = server.add("/cloud/debian-13-genericcloud-amd64.qcow2", BODY)
    sums = f"{sha512(OTHER)}  debian-13-generic-amd64.qcow2\n{sha512(BODY)}  debian-13-genericcloud-amd64.qcow2\n"
    checksums = server.add("/cloud/SHA512SUMS", sums.encode())
    spec = ImageSpec(name="deb", url=url, algo="sha512", checksums_url=checksums)
    assert get(spec).digest == f"sha512:{sha512(BODY)}"


def test_checksums_file_without_the_image_is_an_error(server, get):
    url = server.add("/disk.qcow2", BODY)
    checksums = server.add("/SHA512SUMS", f"{sha512(BODY)}  other.qcow2\n".encode())
    with pytest.raises(ImageError, match=r"no checksum line for disk.qcow2"):
        get(ImageSpec(name="d", url=url, checksums_url=checksums))
    assert server.seen("/disk.qcow2") == []


def test_cache_hit_makes_no_request(server, cache, get, sleeps):
    url = server.add("/disk.qcow2", BODY)
    first = get(url_spec(url))
    server.requests.clear()
    assert fetch(url_spec(url), cache, _NoNetwork(), NullProgress()) == first
    checksums = server.add("/SHA512SUMS", f"{sha512(BODY)}  disk.qcow2\n".encode())
    by_sums = ImageSpec(name="disk", url=url, checksums_url=checksums)
    assert fetch(by_sums, cache, _NoNetwork(), NullProgress()) == first  # known URL, no refresh
    assert server.requests == []
    assert get(by_sums, refresh=True) == first  # a refresh reads only the checksums file
    assert [r.path for r in server.requests] == ["/SHA512SUMS"]


@pytest.mark.parametrize(("status", "text"), [(404, "404 not found"), (403, "403 access denied"), (410, "410")])
def test_client_errors_fail_at_once(server, get, sleeps, status, text):
    url = server.add("/disk.qcow2", BODY, status=status)
    with pytest.raises(ImageError, match=text):
        get(url_spec(url))
    assert sleeps == []


def test_missing_file_is_a_404(server, get):
    with pytest.raises(ImageError, match="404"):
        get(url_spec(server.url("/nothing.qcow2")))


def test_server_errors_are_retried_with_backoff_then_given_up(server, get, sleeps):
    url = server.add("/disk.qcow2", BODY, status=503)
    with pytest.raises(ImageError, match=r"server error 503.*gave up after 4 attempts"):
        get(url_spec(url), retries=3)
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(server.seen("/disk.qcow2")) == 4


def test_slow_response_times_out(server, cache, get, sleeps):
    url = server.add("/disk.qcow2", BODY, delay=30)
    with pytest.raises(ImageError, match="timed out"):
        get(url_spec(url), retries=1, timeouts=Timeouts(connect=5, read=0.2))
    assert sleeps == [1.0]
    assert cache.images() == []


def test_stall_mid_transfer_times_out_then_resumes(server, get):
    url = server.add("/disk.qcow2", BODY, stall_at=50_000, stall=30)
    cached = get(url_spec(url), timeouts=Timeouts(connect=5, read=0.3))
    assert cached.path.read_bytes() == BODY
    assert server.ranges_seen("/disk.qcow2") == [None, "bytes=50000-"]


def test_connection_refused_is_retried_then_reported(get, sleeps):
    with HTTPTestServer() as gone:
        url = gone.url("/disk.qcow2")
    with pytest.raises(ImageError, match="gave up after 2 attempts"):
        get(url_spec(url), retries=1)
    assert sleeps == [1.0]


def test_dns_failure_is_one_clear_error(cache, sleeps):
    url = "http://images.example.invalid/disk.qcow2"
    with pytest.raises(ImageError, match=r"cannot resolve host images.example.invalid"):
        fetch(url_spec(url), cache, _DNSFailure(), NullProgress(), sleep=sleeps.append)
    assert sleeps == []


def test_local_path_image_is_verified_and_imported(tmp_path, cache, get):
    disk = tmp_path / "built.qcow2"
    disk.write_bytes(BODY)
    cached = get(ImageSpec(name="built", path=disk, algo="sha512", digest=sha512(BODY)))
    assert cached.path.read_bytes() == BODY and cached.source == str(disk)
    assert get(ImageSpec(name="built", path=disk)) == cached  # unchanged file: no copy
    with pytest.raises(ImageError, match="mismatch"):
        get(ImageSpec(name="other", path=disk, algo="sha256", digest=hashlib.sha256(OTHER).hexdigest()))
    with pytest.raises(ImageError, match="not found"):
        get(ImageSpec(name="gone", path=tmp_path / "gone.qcow2"))
    assert [image.name for image in cache.images()] == ["built"]


def test_local_path_image_with_direct_kernel_boot(tmp_path, get):
    disk, kernel, initrd = (tmp_path / name for name in ("root.raw", "vmlinuz", "initrd.img"))
    disk.write_bytes(BODY)
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    spec = ImageSpec(name="root", path=disk, format="raw", kernel=kernel, initrd=initrd, cmdline="root=/dev/vda")
    cached = get(spec)
    assert cached.path.suffix == ".raw"
    assert cached.kernel.read_bytes() == b"kernel" and cached.initrd.read_bytes() == b"initrd"
    assert cached.cmdline == "root=/dev/vda"


# --- progress ----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_prints_a_few_lines():
    out, clock = io.StringIO(), _Clock()
    progress = LineProgress(out, clock)
    progress.start("disk", 4 << 20)
    for _ in range(16):
        clock.now += 0.5
        progress.advance(256 << 10)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines == [
        "downloading disk (4.0 MiB)",
        "disk: 25% of 4.0 MiB",
        "disk: 50% of 4.0 MiB",
        "disk: 75% of 4.0 MiB",
        "disk: 4.0 MiB done in 8s (512.0 KiB/s)",
    ]


def test_bar_progress_redraws_one_line_with_speed_and_eta():
    out, clock = io.StringIO(), _Clock()
    progress = BarProgress(out, clock)
    progress.start("disk", 4 << 20, done=1 << 20)
    clock.now = 1.0
    progress.advance(1 << 20)
    progress.finish()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert "\r" in text and "50%" in text and "2.0 MiB / 4.0 MiB" in text
    assert "1.0 MiB/s" in text and "ETA 0:02" in text


def test_make_progress_chooses_by_tty_and_quiet():
    assert type(make_progress(io.StringIO(), isatty=True)) is BarProgress
    assert type(make_progress(io.StringIO())) is LineProgress  # StringIO is no TTY
    assert type(make_progress(io.StringIO(), quiet=True, isatty=True)) is NullProgress


def test_download_reports_progress_and_retries(server, cache, session):
    url = server.add("/disk.qcow2", BODY, cuts=[100_000])
    out = io.StringIO()
    fetch(url_spec(url), cache, session, LineProgress(out), sleep=lambda _: None, timeouts=FAST)
    text = out.getvalue()
    assert "downloading disk (293.0 KiB)" in text
    assert "retrying in 1s" in text
    assert "resuming at 97.7 KiB" in text


# --- labctl image pull -----------------------------------------------------------------


@pytest.fixture
def env(cache, session):
    return ImageEnv(cache=cache, session=lambda: session, sleep=lambda _: None, quiet=True)


def test_pull_url_with_digest(server, env):
    url = server.add("/my-image.qcow2", BODY)
    result = CliRunner().invoke(image, ["pull", "-q", "--url", url, "--sha512", sha512(BODY)], obj=env)
    assert result.exit_code == 0, result.output
    name, digest, path = result.stdout.strip().split("\t")
    assert (name, digest) == ("my-image", f"sha512:{sha512(BODY)}")
    assert Path(path).read_bytes() == BODY


def test_pull_catalog_name_reads_the_checksums_file(server, env):
    url = server.add("/trixie/debian-13-genericcloud-amd64.qcow2", BODY)
    sums = server.add("/trixie/SHA512SUMS", f"{sha512(BODY)}  debian-13-genericcloud-amd64.qcow2\n".encode())
    catalog = parse_catalog({"default": "deb13", "images": {"deb13": {"url": url, "checksums": sums}}})
    env.catalog = lambda: catalog
    result = CliRunner().invoke(image, ["pull"], obj=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"deb13\tsha512:{sha512(BODY)}\t")


@pytest.mark.parametrize(
    "args",
    [["--sha512", "ab"], ["--url", "http://127.0.0.1:9/x.qcow2"], ["deb13", "--url", "http://127.0.0.1:9/x"]],
)
def test_pull_usage_errors(env, args):
    result = CliRunner().invoke(image, ["pull", *args], obj=env)
    assert result.exit_code == 2


def test_pull_wrong_digest_is_an_image_error(server, env):
    url = server.add("/x.qcow2", BODY)
    result = CliRunner().invoke(image, ["pull", "--url", url, "--sha256", hashlib.sha256(OTHER).hexdigest()], obj=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, ImageError)
    assert env.cache.images() == []


class _NoNetwork(requests.Session):
    def request(self, *args, **kwargs):
        raise AssertionError("no request was expected")


class _DNSFailure(requests.Session):
    def request(self, method, url, *args, **kwargs):
        cause = urllib3.exceptions.NameResolutionError("images.example.invalid", None, OSError("no such name"))
        raise requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, url, cause))
