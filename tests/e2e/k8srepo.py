"""A local, signed Kubernetes apt repository carrying the kubeadm/kubelet/kubectl stand-ins as real
.deb packages (:func:`tests.e2e.image.build_debs`) at a pinned version, e.g. ``1.35.0-1.1``.

It has the shape of the upstream one (``core:/stable:/v1.35/deb/``): a flat repository, used as
``deb [signed-by=KEY] URL /``, with ``InRelease``, ``Release``, ``Release.gpg`` and ``Packages``
(+ ``.gz``) at the top and ``Release.key``, the armored public key, beside them; the packages
under ``pool/``. Indexes come from ``apt-ftparchive`` (apt-utils); the signing key is a throwaway
one made for the run with ``gpg`` in a GNUPGHOME of its own (no passphrase, batch), whose
gpg-agent is ended by its pid once the repository is signed.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.image import build_debs
from tests.harness.libvirtd import is_alive

VERSION = re.compile(r"\d+\.\d+\.\d+-[0-9A-Za-z.+~]+\Z")  # upstream: 1.35.0-1.1
ORIGIN = "labctl-tests"
LABEL = "labctl test Kubernetes repository"
KEY_UID = "labctl test Kubernetes repository <k8s-repo@labctl.invalid>"
TIMEOUT = 60.0


@dataclass(frozen=True)
class KubernetesRepo:
    """A built repository: serve ``root`` over HTTP; clients trust ``key`` (``root/Release.key``)."""

    root: Path
    version: str
    fingerprint: str

    @property
    def key(self) -> Path:
        return self.root / "Release.key"

    def files(self) -> dict[str, bytes]:
        """Every file to serve, by URL path under the repository's base."""
        return {path.relative_to(self.root).as_posix(): path.read_bytes()
                for path in sorted(self.root.rglob("*")) if path.is_file()}

    def sources_line(self, url: str, key: Path | str) -> str:
        """The one-line apt source for this repository at ``url`` with the key file at ``key``."""
        return f"deb [signed-by={key}] {url.rstrip('/')}/ /"


def build_repo(root: Path, version: str) -> KubernetesRepo:
    """Build the signed repository in ``root`` (created, must not exist yet) with the stand-ins at ``version``."""
    if not VERSION.match(version):
        raise ValueError(f"not a Kubernetes package version like 1.35.0-1.1: {version!r}")
    pool = root / "pool"
    pool.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="k8s-debs-") as work:
        for deb in build_debs(Path(work), version):
            shutil.copyfile(deb, pool / f"{deb.stem}_{version}_all.deb")
    write_indexes(root)
    with gnupg_home() as home:
        fingerprint = make_key(home)
        sign(root, home)
    return KubernetesRepo(root, version, fingerprint)


def write_indexes(root: Path) -> None:
    """``Packages``, ``Packages.gz`` and ``Release`` (unsigned) for the packages under ``root/pool``."""
    packages = _output(["apt-ftparchive", "packages", "pool"], cwd=root)
    (root / "Packages").write_text(packages, encoding="utf-8")
    (root / "Packages.gz").write_bytes(gzip.compress(packages.encode(), mtime=0))
    release = _output(["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Origin={ORIGIN}",
                       "-o", f"APT::FTPArchive::Release::Label={LABEL}", "release", "."], cwd=root)
    (root / "Release").write_text(release, encoding="utf-8")


@contextlib.contextmanager
def gnupg_home() -> Iterator[Path]:
    """A GNUPGHOME of its own (short path: gpg-agent's sockets live there), removed afterwards,
    its gpg-agent ended by pid first."""
    home = Path(tempfile.mkdtemp(prefix="lc-gpg-", dir="/tmp"))
    try:
        yield home
    finally:
        end_agent(home)
        shutil.rmtree(home, ignore_errors=True)


def make_key(home: Path) -> str:
    """A throwaway signing key (ed25519, no passphrase, no expiry: it lives as long as the run)."""
    _gpg(home, "--passphrase", "", "--quick-generate-key", KEY_UID, "ed25519", "sign", "never")
    colons = _gpg(home, "--with-colons", "--list-secret-keys")
    return next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))


def sign(root: Path, home: Path) -> None:
    """``InRelease`` (clear-signed), ``Release.gpg`` (detached, armored) and ``Release.key``."""
    release = str(root / "Release")
    _gpg(home, "--digest-algo", "SHA512", "--clearsign", "--output", str(root / "InRelease"), release)
    _gpg(home, "--digest-algo", "SHA512", "--armor", "--detach-sign", "--output", str(root / "Release.gpg"), release)
    (root / "Release.key").write_text(_gpg(home, "--armor", "--export"), encoding="utf-8")


def end_agent(home: Path, timeout: float = 10.0) -> None:
    """End the gpg-agent serving ``home``, if one runs, by its pid (it asks the agent itself)."""
    reply = subprocess.run(["gpg-connect-agent", "--homedir", str(home), "--no-autostart", "getinfo pid", "/bye"],
                           capture_output=True, text=True, timeout=TIMEOUT, check=False).stdout
    for pid in (int(line.split()[1]) for line in reply.splitlines() if line.startswith("D ")):
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            deadline = time.monotonic() + timeout
            while is_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not is_alive(pid):
                break


def _gpg(home: Path, *args: str) -> str:
    return _output(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", *args])


def _output(argv: Sequence[str], cwd: Path | None = None) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT, check=True, cwd=cwd).stdout
