"""The e2e test image: labctl's own offline builder, pre-baked packages, and the stand-ins.

The stand-ins (``standin/``) become four tiny Debian packages made here with ``dpkg-deb``:
``labctl-standin`` (the script, the fake API server and its unit) and ``kubeadm``, ``kubelet``,
``kubectl`` (symlinks to it, kubelet with a service), so the roles find them installed the way
they would find the real ones (``command -v``, ``dpkg-query``, ``apt-mark hold``). They go into
the image through mmdebstrap customize hooks added to the builder's mmdebstrap call (its
injected ``run``), so labctl itself never sees them.

Images are cached between runs on the same machine under ``LABCTL_E2E_CACHE`` (default
/var/cache/labctl-e2e), keyed by every build input: suite, packages, the stand-in files, the
hook code here and labctl's builder, apt-source and customize code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from labctl.image import build as imagebuild
from labctl.image.build import BuiltImage, build_image, file_sha512, read_manifest
from labctl.lab.lock import host_lock

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin"
REPO = HERE.parent.parent
IMAGE_NAME = "labctl-e2e"
SUITE = os.environ.get("LABCTL_E2E_SUITE", imagebuild.DEFAULT_SUITE)
# What the roles would otherwise install from the network (cloud-init/scripts: gateway nftables and
# dnsmasq, lb haproxy and keepalived, k8s nodes containerd, conntrack and curl, external etcd members
# etcd-server and every master etcd-client), plus openssl and python3-yaml for the kubeadm stand-in.
PACKAGES = ("haproxy", "dnsmasq", "nftables", "keepalived", "containerd", "conntrack", "curl", "openssl",
            "python3-yaml", "etcd-server", "etcd-client")
# Installing a package enables its service; labctl's builder (images/customize.sh) disables the
# role daemons again, and each role enables what it uses.
STANDIN_VERSION = "1.35.0-1.1+labctl.standin"  # the version table's default minor (images/kubernetes.yaml)
BUILD_LOCK_TIMEOUT = 3600.0  # seconds to wait for another run building the same image
LIB = "usr/lib/labctl-standin"
DEBS_IN_IMAGE = "/tmp/labctl-standin-debs"
BUILD_INPUTS = (
    REPO / "labctl" / "image" / "build.py",
    REPO / "labctl" / "image" / "aptsources.py",
    REPO / "images" / "customize.sh",
    Path(__file__).resolve(),
)

Run = Callable[[Sequence[str]], None]
Log = Callable[[str], None]


def cache_dir() -> Path:
    return Path(os.environ.get("LABCTL_E2E_CACHE", "/var/cache/labctl-e2e"))


def standin_files() -> list[Path]:
    return sorted(p for p in STANDIN.iterdir() if p.is_file() and not p.name.startswith("."))


def cache_key(
    suite: str = SUITE,
    packages: Sequence[str] = PACKAGES,
    files: Sequence[Path] | None = None,
    extra: Mapping[str, bytes] | None = None,
) -> str:
    """A digest of every input of an image build; a change to any of them means a new image.

    ``files`` are the source files beyond labctl's builder (default: the stand-ins), ``extra``
    any content the build lays into the image, by name."""
    files = standin_files() if files is None else files
    inputs = {
        "suite": suite,
        "packages": sorted(packages),
        "base": sorted(imagebuild.BASE_PACKAGES),
        "files": {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in (*BUILD_INPUTS, *files)},
        "extra": {name: hashlib.sha256(data).hexdigest() for name, data in (extra or {}).items()},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


# --- the stand-in packages ---------------------------------------------------------------------


def package_trees(version: str = STANDIN_VERSION) -> dict[str, tuple[dict[str, str], dict[str, bytes | str]]]:
    """Package name -> (control fields, files by path: bytes for content, str for a symlink target)."""
    def read(name: str) -> bytes:
        return (STANDIN / name).read_bytes()

    script = f"/{LIB}/standin.py"
    common = {"Version": version, "Architecture": "all", "Maintainer": "labctl e2e <e2e@labctl.invalid>",
              "Section": "admin", "Priority": "optional"}
    return {
        "labctl-standin": (
            {**common, "Depends": "python3, python3-yaml, openssl",
             "Description": "labctl e2e recording stand-ins for kubeadm, kubelet, kubectl (test image only)"},
            {f"{LIB}/standin.py": read("standin.py"), f"{LIB}/fake_apiserver.py": read("fake_apiserver.py"),
             f"{LIB}/VERSION": f"{version}\n".encode(),
             "usr/lib/systemd/system/labctl-fake-apiserver.service": read("labctl-fake-apiserver.service")},
        ),
        "kubeadm": ({**common, "Depends": "labctl-standin, kubelet", "Description": "kubeadm stand-in"},
                    {"usr/bin/kubeadm": script}),
        "kubelet": ({**common, "Depends": "labctl-standin", "Description": "kubelet stand-in"},
                    {"usr/bin/kubelet": script, "usr/lib/systemd/system/kubelet.service": read("kubelet.service")}),
        "kubectl": ({**common, "Depends": "labctl-standin", "Description": "kubectl stand-in"},
                    {"usr/bin/kubectl": script}),
    }


def build_debs(out_dir: Path, version: str = STANDIN_VERSION) -> list[Path]:
    """The stand-in packages at ``version`` as .deb files in ``out_dir``, dependencies first."""
    debs = []
    for name, (control, files) in package_trees(version).items():
        root = out_dir / f"{name}.tree"
        (root / "DEBIAN").mkdir(parents=True)
        fields = {"Package": name, **control}
        (root / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
        for rel, content in files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                target.symlink_to(content)
            else:
                target.write_bytes(content)
                target.chmod(0o755 if rel.endswith(".py") else 0o644)
        deb = out_dir / f"{name}.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
                       check=True, capture_output=True, timeout=60)
        debs.append(deb)
    return debs


def with_standins(run: Run, debs: Sequence[Path]) -> Run:
    """``run`` for build_image, adding to its mmdebstrap call the hooks that install ``debs``."""
    names = [f"{DEBS_IN_IMAGE}/{deb.name}" for deb in debs]
    return with_hooks(run, [
        f"--customize-hook=mkdir -p \"$1\"{DEBS_IN_IMAGE}",
        "--customize-hook=" + shlex.join(["copy-in", *map(str, debs), DEBS_IN_IMAGE]),
        # Constant text: the deb names are ours. dpkg, not apt: they are local files.
        f"--customize-hook=chroot \"$1\" dpkg -i {' '.join(names)}",
        f"--customize-hook=rm -rf \"$1\"{DEBS_IN_IMAGE}",
    ])


def with_hooks(run: Run, hooks: Sequence[str]) -> Run:
    """``run`` for build_image, with ``hooks`` added to its mmdebstrap call after the builder's own
    customize hooks (so after images/customize.sh); every other command runs unchanged."""

    def wrapped(argv: Sequence[str]) -> None:
        argv = list(argv)
        if argv and argv[0] == "mmdebstrap":
            last = max(i for i, arg in enumerate(argv) if arg.startswith("--customize-hook="))
            argv[last + 1 : last + 1] = hooks
        run(argv)

    return wrapped


# --- build, cache -----------------------------------------------------------------------------


def cached_image(directory: Path, name: str = IMAGE_NAME) -> BuiltImage | None:
    manifest = directory / f"{name}.json"
    if not manifest.is_file():
        return None
    built = read_manifest(manifest)
    ok = all(p.is_file() for p in (built.path, built.kernel, built.initrd)) and file_sha512(built.path) == built.sha512
    if ok:
        os.utime(directory)  # in use: see _remove_stale
    return built if ok else None


def e2e_image(log: Log = print, run: Run = imagebuild.run_command) -> tuple[BuiltImage, bool]:
    """The cached test image, built first if needed: (image, whether it was built)."""

    def build(directory: Path) -> BuiltImage:
        log(f"e2e image: building {directory.name} (suite {SUITE}, + {', '.join(PACKAGES)})")
        with tempfile.TemporaryDirectory(prefix="debs-", dir=directory.parent) as debs_dir:
            debs = build_debs(Path(debs_dir))
            return build_image(IMAGE_NAME, directory, None, SUITE, PACKAGES, with_standins(run, debs), log=log)

    return cached_build(IMAGE_NAME, SUITE, cache_key(), build)


def cached_build(name: str, suite: str, key: str, build: Callable[[Path], BuiltImage]) -> tuple[BuiltImage, bool]:
    """The image ``name`` cached under :func:`cache_dir` by its ``key``, else ``build(directory)``
    (under the cache's lock: another run may be building it); (image, whether it was built)."""
    root = cache_dir()
    directory = root / f"{name}-{suite}-{key}"
    with host_lock(root / ".lock", timeout=BUILD_LOCK_TIMEOUT):
        image = cached_image(directory, name)
        if image is not None:
            return image, False
        _remove_stale(root, name, keep=directory)
        return build(directory), True


STALE_AFTER = 2 * 86400  # seconds unused after which another key's build of an image goes


def _remove_stale(root: Path, name: str, keep: Path) -> None:
    """Builds of image ``name`` for other keys that no run has used for two days go. Recent ones stay:
    another checkout on this machine (another branch, other inputs) may be using one right now."""
    for entry in root.glob(f"{name}-*"):
        if entry != keep and entry.is_dir() and time.time() - entry.stat().st_mtime > STALE_AFTER:
            shutil.rmtree(entry, ignore_errors=True)
