"""The real kubeadm, kubeadm's CA pin helper and crictl for host-side tests: built on first use, then cached.

    kubeadm_binary(release=None) -> Path     kubeadm of a release (default: the newest 1.35.x served)
    pin_binary(release=None) -> Path         kubeadm-pin: kubeadm's own pubkeypin.Hash of a CA PEM file
    crictl_binary() -> Path                  crictl of the cri-tools release tests/kubeadm/crictl pins
    kubernetes_binary(command, release=None) -> Path    any k8s.io/kubernetes/cmd/<command>

Binaries live in ``$LABCTL_TEST_CACHE/kubeadm/<release>/`` and ``$LABCTL_TEST_CACHE/crictl/<version>/``
beside a stamp of what they were built from (go version, go.mod, go.sum, sources, flags): a changed
input rebuilds, an unchanged one costs a few ``go`` calls. One build per output directory at a time (an
flock), and the binary appears by rename, whole or not at all. Without go, :class:`GoUnavailable` says why.

A session-scoped fixture in a test module::

    @pytest.fixture(scope="session")
    def kubeadm() -> Path:
        return or_skip(kubeadm_binary)       # skipped, with the reason printed, where go is missing
"""

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.kubeadm.gomodule import (
    CRI_TOOLS,
    CRICTL_DIR,
    CRICTL_PACKAGE,
    HERE,
    KUBERNETES,
    PIN_PACKAGE,
    kubernetes_module,
    parse_release,
    required_version,
)
from tests.kubeadm.gotool import BuildError, Go, GoUnavailable, locked, progress

__all__ = [
    "BuildError",
    "GoUnavailable",
    "Job",
    "crictl_binary",
    "ensure_binary",
    "kubeadm_binary",
    "kubernetes_binary",
    "or_skip",
    "pin_binary",
    "resolve_release",
]

DEFAULT_MINOR = "1.35"
# As Kubernetes' release build does it (hack/lib/golang.sh, hack/lib/version.sh): no symbols, trimmed
# paths, these tags, the version stamped into both version packages.
KUBERNETES_TAGS = "selinux,notest,grpcnotrace"
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One binary to build: Go package, module to build it in, where it goes, the flags."""

    name: str
    package: str
    module: Path
    outdir: Path
    flags: tuple[str, ...]

    @property
    def target(self) -> Path:
        return self.outdir / self.name

    def stamp(self, go: Go) -> str:
        """What the binary is built from; a different stamp means a rebuild."""
        sources = hashlib.sha256()
        for path in sorted([self.module / "go.mod", self.module / "go.sum", *self.module.rglob("*.go")]):
            sources.update(f"{path.relative_to(self.module)}\0".encode() + path.read_bytes())
        record = {"go": go.version(), "package": self.package, "flags": self.flags, "module": sources.hexdigest()}
        return json.dumps(record, sort_keys=True) + "\n"


def kubeadm_binary(release: str | None = None, go: Go | None = None) -> Path:
    """The real kubeadm of ``release`` (a minor such as "1.35", or "1.35.4"; default the newest 1.35.x)."""
    return kubernetes_binary("kubeadm", release, go)


def kubernetes_binary(command: str, release: str | None = None, go: Go | None = None) -> Path:
    """``k8s.io/kubernetes/cmd/<command>`` of ``release``, static, with the release's version stamped in."""
    go = go or Go.find()
    version = resolve_release(go, release)
    return ensure_binary(go, _kubernetes_job(go, command, f"{KUBERNETES}/cmd/{command}", version))


def pin_binary(release: str | None = None, go: Go | None = None) -> Path:
    """kubeadm-pin (tests/kubeadm/kubeadm-pin), built against ``release``'s kubeadm code."""
    go = go or Go.find()
    version = resolve_release(go, release)
    return ensure_binary(go, _kubernetes_job(go, "kubeadm-pin", PIN_PACKAGE, version))


def crictl_binary(go: Go | None = None) -> Path:
    """crictl of the cri-tools release tests/kubeadm/crictl/go.mod pins, static, version stamped."""
    go = go or Go.find()
    version = required_version(go, CRICTL_DIR, CRI_TOOLS)
    flags = ("-trimpath", "-ldflags", f"-X {CRI_TOOLS}/pkg/version.Version={version.removeprefix('v')}")
    return ensure_binary(go, Job("crictl", CRICTL_PACKAGE, CRICTL_DIR, go.cache / "crictl" / version, flags))


def resolve_release(go: Go, spec: str | None = None) -> str:
    """``vX.Y.Z`` for a release or a minor; a minor is its newest patch the module proxy serves, or, when
    the proxy cannot be asked, the newest already built or pinned."""
    major, minor, patch = parse_release(spec or DEFAULT_MINOR)
    if patch is not None:
        return f"v{major}.{minor}.{patch}"
    try:
        listing = go.json(["list", "-m", "-json", "-versions", KUBERNETES], go.cache)
    except BuildError as error:
        fallback = _known_releases(go, major, minor)
        if not fallback:
            raise
        progress(f"cannot list {KUBERNETES} versions, using {fallback[-1]}: {error}")
        return fallback[-1]
    served = [v for v in listing.get("Versions") or () if "-" not in v and _minor_of(v) == (major, minor)]
    if not served:
        raise BuildError(f"no {KUBERNETES} v{major}.{minor}.x release is served by the module proxy")
    return max(served, key=_release_key)


def or_skip(build: Callable[..., T], *args: Any) -> T:
    """``build(*args)``, or skip the calling test for want of go, saying why; in CI (``CI`` set) fail
    instead, since CI has go."""
    import pytest

    try:
        return build(*args)
    except GoUnavailable as error:
        print(f"NOTE: {error}")
        if os.environ.get("CI"):
            pytest.fail(f"CI has no usable go: {error}")
        pytest.skip(f"no usable go here: {error}")


def ensure_binary(go: Go, job: Job) -> Path:
    """``job.target``, built unless it exists with the same stamp; one build at a time per directory."""
    stamp_file = job.outdir / f".{job.name}.stamp"
    stamp = job.stamp(go)
    if _fresh(job.target, stamp_file, stamp):
        return job.target
    with locked(job.outdir / ".lock", f"{job.name} in {job.outdir}"):
        if _fresh(job.target, stamp_file, stamp):  # built by the run we waited for
            return job.target
        progress(f"building {job.package} into {job.outdir} (minutes when the Go caches in {go.cache} are cold)")
        started = time.monotonic()
        partial = job.outdir / f".{job.name}.partial-{os.getpid()}"
        try:
            go.build(job.package, partial, job.module, job.flags)
            os.replace(partial, job.target)
        finally:
            partial.unlink(missing_ok=True)
        _write_atomically(stamp_file, stamp)
        progress(f"built {job.target} in {time.monotonic() - started:.0f} s")
    return job.target


def _kubernetes_job(go: Go, name: str, package: str, release: str) -> Job:
    module = kubernetes_module(go, release)
    return Job(name, package, module, go.cache / "kubeadm" / release, _kubernetes_flags(go, module, release))


def _kubernetes_flags(go: Go, module: Path, release: str) -> tuple[str, ...]:
    major, minor, _ = parse_release(release)
    # The build date is the release's own (the module's publication time), so rebuilds are identical.
    info = go.json(["mod", "download", "-json", f"{KUBERNETES}@{release}"], module)
    published = json.loads(Path(info["Info"]).read_text())["Time"]
    values = {"gitVersion": release, "gitMajor": str(major), "gitMinor": str(minor), "buildDate": published}
    stamps = [f"-X {package}.{key}={value}" for package in VERSION_PACKAGES for key, value in values.items()]
    return ("-trimpath", "-tags", KUBERNETES_TAGS, "-ldflags", " ".join(["all=-s -w", *stamps]))


def _known_releases(go: Go, major: int, minor: int) -> list[str]:
    """Releases of one minor that work offline: the committed pin and those built before, oldest first."""
    known = {required_version(go, HERE, KUBERNETES)}
    built = go.cache / "kubeadm"
    if built.is_dir():
        known.update(path.name for path in built.iterdir() if (path / "kubeadm").is_file())
    return sorted((v for v in known if _minor_of(v) == (major, minor)), key=_release_key)


def _minor_of(version: str) -> tuple[int, int] | None:
    try:
        major, minor, _ = parse_release(version)
    except BuildError:
        return None
    return major, minor


def _release_key(version: str) -> tuple[int, int, int]:
    major, minor, patch = parse_release(version)
    return major, minor, patch or 0


def _fresh(target: Path, stamp_file: Path, stamp: str) -> bool:
    try:
        return os.access(target, os.X_OK) and stamp_file.read_text() == stamp
    except OSError:
        return False


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)
