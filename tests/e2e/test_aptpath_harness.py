"""Self-test of the pieces a lab needs when its nodes install everything through apt (issue #13):

* the Debian package proxy (tests/harness/aptproxy.py) carried into a network namespace of this
  test's own, where it listens on an address that exists only in there (as the lab NAT network's
  host side does in the private libvirtd's namespace): the trixie and trixie-security Release
  files, and apt itself (signatures checked against Debian's keyring) downloading a small package
  twice, the second time from the proxy's cache; nothing but the remapped archives is proxied;
* the local signed Kubernetes repository (tests/e2e/k8srepo.py) at a pinned version
  (``LABCTL_TEST_K8S_VERSION``, default 1.35.0-1.1), verified by apt served on 127.0.0.1 and from
  a server inside the namespace; a tampered Release, InRelease or Packages fails;
* the genericcloud-like image (tests/e2e/cloudimage.py), built with labctl's own builder (2.5 to
  3.5 minutes cold here, on two cores shared with another test run; cached after that) and read
  with debugfs without booting it.

Runs as root; skipped elsewhere with the reason printed, failed instead under ``CI``. Whatever
happens, every process is ended by its pid and the namespace deleted. Timings are printed (-s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.image.build import BuiltImage
from tests.e2e.cloudimage import ROLE_PACKAGES, cloud_image
from tests.e2e.k8srepo import KubernetesRepo, build_repo
from tests.harness import aptproxy
from tests.harness.aptclient import AptRoot, explain
from tests.harness.aptproxy import AptProxy
from tests.harness.netns import TestNetns
from tests.harness.procs import Started, group_members
from tests.httpserver import HTTPTestServer
from tests.imagefs import debugfs, exists, installed_packages, to_raw

pytestmark = pytest.mark.slow

K8S_VERSION = os.environ.get("LABCTL_TEST_K8S_VERSION", "1.35.0-1.1")
# Exists only inside the test's namespace, like the lab NAT network's host side (.1).
BRIDGE_ADDRESS = "10.213.254.1/24"
REPO_PORT = 18081
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SMALL_PACKAGE = "netbase"  # a few KiB, architecture all
TOOLS = ("apt-ftparchive", "gpg", "gpg-agent", "gpg-connect-agent", "dpkg-deb", "curl", "ss", "mmdebstrap", "mkfs.ext4",
         "debugfs", "qemu-img")


def _require() -> None:
    ok, why = aptproxy.can_run()
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    reason = None if ok and not missing else why if not ok else f"missing {', '.join(missing)}"
    if reason and os.environ.get("CI"):
        pytest.fail(f"apt-path harness cannot run: {reason} (CI must provide it)")
    if reason:
        print(f"apt-path harness skipped: {reason}")
        pytest.skip(reason)


def timed(what: str, started: float) -> None:
    print(f"\n[timing] {what}: {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="module")
def netns() -> Iterator[TestNetns]:
    _require()
    with TestNetns(BRIDGE_ADDRESS) as ns:
        yield ns


@pytest.fixture(scope="module")
def proxy(netns: TestNetns, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AptProxy, str]]:
    """The proxy and the mirror base URL for clients in the namespace (``http://ADDR:3142``)."""
    started = time.monotonic()
    with AptProxy(tmp_path_factory.mktemp("aptproxy")) as running:
        base = running.bridge_into(netns, netns.address)
        timed(f"proxy up, bridged to {base} ({'shared' if running.shared_cache else 'private'} cache)", started)
        yield running, base


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> KubernetesRepo:
    _require()
    started = time.monotonic()
    built = build_repo(tmp_path_factory.mktemp("k8s") / "repo", K8S_VERSION)
    timed(f"Kubernetes repository {K8S_VERSION} built and signed", started)
    return built


def in_netns(netns: TestNetns) -> Callable[..., subprocess.CompletedProcess[str]]:
    """subprocess.run, inside the namespace (for :class:`AptRoot`)."""

    def run(argv: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(netns.exec_argv(argv), **options)  # type: ignore[no-any-return]

    return run


def release_fields(text: str) -> dict[str, str]:
    """The single-line fields of a Release file (``Codename: trixie``…)."""
    pairs = (line.split(":", 1) for line in text.splitlines() if line[:1] not in (" ", "") and ":" in line)
    return {key: value.strip() for key, value in pairs}


def fetch(netns: TestNetns, url: str, out: Path) -> str:
    """GET ``url`` from inside the namespace into ``out``; returns the HTTP status."""
    result = netns.run(["curl", "-sS", "-m", "60", "-o", str(out), "-w", "%{http_code}", url], timeout=90,
                       check=False)
    return result.stdout or result.stderr


# --- the package proxy -------------------------------------------------------------------------


def test_the_trixie_release_files_come_through_the_proxy(proxy: tuple[AptProxy, str], netns: TestNetns,
                                                          tmp_path: Path) -> None:
    running, base = proxy
    started = time.monotonic()
    assert fetch(netns, f"{base}/debian/dists/trixie/Release", tmp_path / "Release") == "200"
    assert release_fields((tmp_path / "Release").read_text())["Codename"] == "trixie"
    timed("trixie Release through the proxy", started)
    if "debian-security" in running.mirrors:
        url = f"{base}/debian-security/dists/trixie-security/Release"
        assert fetch(netns, url, tmp_path / "Security") == "200"
        assert release_fields((tmp_path / "Security").read_text())["Codename"] == "trixie-security"
        print(f"trixie-security: reachable through the proxy ({running.mirrors['debian-security']})")
    else:
        print("trixie-security: the host has no security mirror; not proxied")


def test_apt_gets_a_package_through_the_proxy_then_from_its_cache(proxy: tuple[AptProxy, str], netns: TestNetns,
                                                                  tmp_path: Path) -> None:
    running, base = proxy
    source = f"deb [signed-by={DEBIAN_KEYRING}] {base}/debian trixie main"
    apt = AptRoot(tmp_path / "apt", [source], run=in_netns(netns))
    started = time.monotonic()
    update = apt.update()
    assert update.returncode == 0, explain(update)
    timed("apt-get update of trixie main through the proxy (Debian's signatures checked)", started)
    uri = apt.apt_get("download", "--print-uris", SMALL_PACKAGE).stdout.split("'")[1]
    path = uri.removeprefix(base + "/")
    fetched = []
    for attempt in ("first", "second"):
        started = time.monotonic()
        download = apt.download(SMALL_PACKAGE, tmp_path / attempt)
        assert download.returncode == 0, explain(download)
        assert [p.suffix for p in (tmp_path / attempt).iterdir()] == [".deb"]
        fetched.append(running.upstream_fetches(path))
        timed(f"{attempt} download of {path} (mirror fetches so far: {fetched[-1]})", started)
    # At most one fetch from the mirror (none if an earlier run left it in the shared cache), and
    # none for the second download: it came from the cache.
    assert fetched[0] <= 1 and fetched[1] == fetched[0]


def test_nothing_but_the_remapped_archives_is_proxied(proxy: tuple[AptProxy, str], netns: TestNetns,
                                                      tmp_path: Path) -> None:
    _, base = proxy
    assert fetch(netns, f"{base}/ubuntu/dists/noble/Release", tmp_path / "other") == "403"
    named = netns.run(["curl", "-sS", "-m", "30", "-o", "/dev/null", "-w", "%{http_code}", "-x", base,
                       "http://mirror.example.invalid/debian/dists/trixie/Release"], timeout=60, check=False)
    assert named.stdout == "403"


def test_teardown_ends_every_process_by_pid_and_deletes_the_namespace(tmp_path: Path) -> None:
    _require()
    with TestNetns(BRIDGE_ADDRESS) as ns, AptProxy(tmp_path) as running:
        running.bridge_into(ns, ns.address)
        assert ns.listens(aptproxy.PROXY_PORT)
        # A connection held open keeps a forked socat child in each half of the bridge.
        peer = (ns.address, aptproxy.PROXY_PORT)
        hold = f"import socket, time; c = socket.create_connection({peer!r}); time.sleep(60)"
        holder = subprocess.Popen(ns.exec_argv([sys.executable, "-c", hold]), stdin=subprocess.DEVNULL)
        groups = running.process_groups()

        def members() -> list[int]:
            return [pid for group in groups for pid in group_members(group)]

        deadline = time.monotonic() + 20
        while len(members()) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(groups) == 3 and len(members()) >= 5, members()  # 3 leaders, 2 forked socat children
        name = ns.name
    holder.wait(timeout=30)  # ended with the namespace: it ran in there
    assert not members()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert name not in listed.split()


# --- the Kubernetes repository -----------------------------------------------------------------


def serve(repo: KubernetesRepo, server: HTTPTestServer, prefix: str, **changes: bytes | None) -> str:
    """Serve the repository under ``prefix``, with some files replaced (None: missing)."""
    for path, body in {**repo.files(), **changes}.items():
        if body is not None:
            server.add(f"{prefix}/{path}", body)
    return server.url(prefix)


def apt_for(repo: KubernetesRepo, url: str, base: Path) -> AptRoot:
    return AptRoot(base, [repo.sources_line(url, repo.key)])


def test_apt_verifies_the_repository_and_gets_the_pinned_kubeadm(repo: KubernetesRepo, tmp_path: Path) -> None:
    with HTTPTestServer() as server:
        apt = apt_for(repo, serve(repo, server, "/core/stable/deb"), tmp_path / "apt")
        update = apt.update()
        assert update.returncode == 0, explain(update)
        download = apt.download(f"kubeadm={K8S_VERSION}", tmp_path / "debs")
        assert download.returncode == 0, explain(download)
    (deb,) = (tmp_path / "debs").iterdir()
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert fields == f"Package: kubeadm\nVersion: {K8S_VERSION}\n"
    assert {"InRelease", "Release", "Release.gpg", "Release.key", "Packages", "Packages.gz"} <= set(repo.files())
    assert repo.key.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def tampered(text: bytes) -> bytes:
    changed = text.replace(b"Origin: labctl-tests", b"Origin: labctl-testz", 1)
    assert changed != text
    return changed


@pytest.mark.parametrize("case", ["InRelease", "Release", "Packages"])
def test_a_tampered_repository_fails_verification(repo: KubernetesRepo, tmp_path: Path, case: str) -> None:
    files = repo.files()
    cases: dict[str, dict[str, bytes | None]] = {
        "InRelease": {"InRelease": tampered(files["InRelease"])},
        # No InRelease: apt falls back to Release + Release.gpg, and the signature no longer matches.
        "Release": {"InRelease": None, "Release": tampered(files["Release"])},
        # Signatures intact, but the index no longer has the hash the signed Release gives.
        "Packages": {"Packages.gz": None, "Packages": files["Packages"].replace(b"kubeadm", b"kubeadx")},
    }
    changes = cases[case]
    with HTTPTestServer() as server:
        apt = apt_for(repo, serve(repo, server, "/core/stable/deb", **changes), tmp_path / "apt")
        update = apt.update()
        download = apt.download(f"kubeadm={K8S_VERSION}", tmp_path / "debs")
    assert update.returncode != 0, explain(update)
    message = update.stdout + update.stderr
    assert ("BADSIG" in message or "not signed" in message) if case != "Packages" else "Hash" in message, message
    assert download.returncode != 0 and not list((tmp_path / "debs").iterdir())


def test_the_repository_served_inside_the_namespace_verifies_there(repo: KubernetesRepo, netns: TestNetns,
                                                                  tmp_path: Path) -> None:
    server = Started(netns.exec_argv([sys.executable, "-m", "http.server", str(REPO_PORT), "--bind", netns.address,
                                      "--directory", str(repo.root)]), tmp_path / "http.log").start()
    try:
        server.wait_until(lambda: netns.listens(REPO_PORT), 20, f"listener on {REPO_PORT}")
        url = f"http://{netns.address}:{REPO_PORT}"
        assert fetch(netns, f"{url}/InRelease", tmp_path / "InRelease") == "200"
        assert (tmp_path / "InRelease").read_bytes() == (repo.root / "InRelease").read_bytes()
        apt = AptRoot(tmp_path / "apt", [repo.sources_line(url, repo.key)], run=in_netns(netns))
        update = apt.update()
        assert update.returncode == 0, explain(update)
        assert apt.download(f"kubelet={K8S_VERSION}", tmp_path / "debs").returncode == 0
    finally:
        server.stop()


# --- the genericcloud-like image ---------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    _require()
    started = time.monotonic()
    built, fresh = cloud_image()
    timed(f"genericcloud-like image {'built' if fresh else 'from the cache'} ({built.path})", started)
    return built


@pytest.fixture(scope="module")
def raw(image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_raw(image.path, tmp_path_factory.mktemp("raw") / "root.raw")


def test_the_image_has_no_role_daemon_and_no_stand_in(raw: Path) -> None:
    packages = installed_packages(raw)
    assert not packages & {*ROLE_PACKAGES, "kubeadm", "kubelet", "kubectl", "labctl-standin"}
    # The probes' python3 and python3-yaml come with cloud-init: nothing was added for the tests.
    assert {"cloud-init", "python3", "python3-yaml", "unattended-upgrades", "systemd-resolved"} <= packages


def test_the_image_runs_unattended_upgrades_and_resolved_as_debian_ships_them(raw: Path) -> None:
    assert "unattended-upgrades.service" in debugfs(raw, "ls /etc/systemd/system/multi-user.target.wants")
    timers = debugfs(raw, "ls /etc/systemd/system/timers.target.wants")
    assert "apt-daily.timer" in timers and "apt-daily-upgrade.timer" in timers
    periodic = debugfs(raw, "cat /etc/apt/apt.conf.d/20auto-upgrades")
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    wants = debugfs(raw, "ls /etc/systemd/system/sysinit.target.wants") + debugfs(
        raw, "ls /etc/systemd/system/multi-user.target.wants")
    assert "systemd-resolved.service" in wants
    assert "stub-resolv.conf" in debugfs(raw, "stat /etc/resolv.conf")


def test_the_image_keeps_its_apt_sources_over_mirror_lists_as_debians(raw: Path) -> None:
    assert not exists(raw, "/etc/apt/sources.list")
    assert "mirror+file:///etc/apt/mirrors/debian.list" in debugfs(raw, "cat /etc/apt/sources.list.d/debian.sources")
    assert debugfs(raw, "cat /etc/apt/mirrors/debian.list").startswith("http")
    cfg = yaml.safe_load(debugfs(raw, "cat /etc/cloud/cloud.cfg.d/01_debian_cloud.cfg"))
    assert cfg["apt"] == {"generate_mirrorlists": True, "preserve_sources_list": True}
    # Debian's cloud-init package keeps the sources too, and knows generate_mirrorlists (its patch).
    assert yaml.safe_load(debugfs(raw, "cat /etc/cloud/cloud.cfg"))["apt"]["preserve_sources_list"] is True
    module = debugfs(raw, "cat /usr/lib/python3/dist-packages/cloudinit/config/cc_apt_configure.py")
    assert "def generate_mirrorlists(" in module
