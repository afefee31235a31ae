"""``labctl image build``: an offline, cloud-init-ready Debian image made with mmdebstrap.

The build is planned without touching anything (package list, apt sources, the files laid over
the root filesystem, the mmdebstrap / mkfs.ext4 / qemu-img argument lists, the manifest) and then
applied by :func:`build_image` through an injected ``run(argv)``. No loop devices, no mounts:

1. ``mmdebstrap --mode=root`` into a directory, from the apt mirror alone;
2. ``mkfs.ext4 -d`` that directory into a raw file (unpartitioned, label ``labctl-root``);
3. ``qemu-img convert`` to qcow2; the kernel and initrd are copied out beside it.

The image boots by direct kernel boot (``NAME.vmlinuz``, ``NAME.initrd``, :data:`KERNEL_CMDLINE`),
all described by ``NAME.json``. Its root filesystem grows with the disk: cloud-init's resizefs
runs resize2fs on the unpartitioned root at first boot (growpart is switched off: there is no
partition to grow).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labctl.errors import ConfigError, ImageError
from labctl.image.aptsources import AptSource, read_host_sources, resolve_sources
from labctl.image.cache import Digester
from labctl.lab.validate import suggestion
from labctl.resources import data_file

SUPPORTED_SUITES = ("bookworm", "trixie", "forky")  # forky: containerd 2.x, for Kubernetes ≥ 1.36
DEFAULT_SUITE = "trixie"  # Debian 13, as the catalog's default image
ROOT_LABEL = "labctl-root"
KERNEL_CMDLINE = f"root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8"

# Close to Debian's genericcloud image: cloud kernel, cloud-init, sshd, sudo, locales (cloud-init's
# locale module needs it), tzdata, netplan with systemd-networkd and -resolved (what those images use
# for bookworm and trixie), resize2fs, and mount for the NoCloud seed ISO (the cloud kernel has isofs).
BASE_PACKAGES = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "libpam-systemd",
    "cloud-init",
    "openssh-server",
    "sudo",
    "locales",
    "tzdata",  # cloud-init's timezone module needs /usr/share/zoneinfo
    "netplan.io",
    "systemd-resolved",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "e2fsprogs",
    "mount",
    "procps",
    "less",
    "zstd",  # initramfs-tools compresses with zstd and warns without it
)

MIN_DISK_BYTES = 2 << 30
DISK_ALIGN = 256 << 20
CUSTOMIZE_IN_IMAGE = "/tmp/labctl-customize.sh"  # noqa: S108 - inside the image; mmdebstrap empties its /tmp
# A constant: mmdebstrap hands the chroot directory in as $1, nothing is spliced in.
CUSTOMIZE_HOOK = f'chroot "$1" /bin/sh {CUSTOMIZE_IN_IMAGE}'
OVERLAY_MTIME = 946684800  # 2000-01-01: the overlay's files carry no build time

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+\Z")

Run = Callable[[Sequence[str]], None]
Log = Callable[[str], None]


@dataclass(frozen=True)
class ImagePlan:
    """What an image build will do; computed without touching anything."""

    name: str
    suite: str
    packages: tuple[str, ...]
    sources: tuple[AptSource, ...]
    cmdline: str = KERNEL_CMDLINE


def plan_image(
    name: str,
    suite: str,
    include: Iterable[str],
    mirror: str | None = None,
    host_sources: Callable[[], Sequence[AptSource]] = read_host_sources,
) -> ImagePlan:
    """Validate the request, fix the package list and the apt sources (``--mirror`` or the host's)."""
    if not _NAME.match(name):
        raise ConfigError("name", f"invalid image name {name!r}", "use letters, digits, '.', '_', '+', '-'")
    if suite not in SUPPORTED_SUITES:
        hint = suggestion(suite, SUPPORTED_SUITES) or f"one of {', '.join(SUPPORTED_SUITES)}"
        raise ConfigError("suite", f"unsupported suite {suite!r}", hint)
    packages = plan_packages(include)
    return ImagePlan(name, suite, packages, resolve_sources(mirror, suite, host_sources))


def plan_packages(include: Iterable[str]) -> tuple[str, ...]:
    """:data:`BASE_PACKAGES` then the extras (``--include``, commas allowed), each once."""
    extras = [name.strip() for item in include for name in item.split(",") if name.strip()]
    for name in extras:
        if not _PACKAGE.match(name):
            raise ConfigError("include", f"not a Debian package name: {name!r}")
    return tuple(dict.fromkeys((*BASE_PACKAGES, *extras)))


def render_cloud_cfg() -> dict[str, Any]:
    """The image's own cloud-init settings (``/etc/cloud/cloud.cfg.d/90_labctl.cfg``)."""
    return {
        "datasource_list": ["NoCloud", "None"],
        # The root file system is the whole disk: there is no partition for growpart to grow.
        # resizefs still grows the file system to the disk at first boot.
        "growpart": {"mode": "off"},
        "resize_rootfs": True,
    }


def render_image_files() -> dict[str, bytes]:
    """Files laid over the root filesystem before the customize script runs, by path in the image."""
    cloud_cfg = "# labctl image build\n" + yaml.safe_dump(render_cloud_cfg(), sort_keys=False)
    return {
        "etc/cloud/cloud.cfg.d/90_labctl.cfg": cloud_cfg.encode(),
        "etc/hostname": b"localhost\n",  # cloud-init sets the real one from meta-data
        "etc/hosts": b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        b"ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        "etc/fstab": f"LABEL={ROOT_LABEL}\t/\text4\trw,discard,errors=remount-ro\t0\t1\n".encode(),
        "etc/default/locale": b"LANG=C.UTF-8\n",  # built into libc: nothing for cloud-init to generate
        CUSTOMIZE_IN_IMAGE.lstrip("/"): data_file("images", "customize.sh").read_bytes(),
    }


def render_overlay_tar(files: Mapping[str, bytes]) -> bytes:
    """A tarball of ``files`` (root-owned, 0644, scripts 0755) without directory entries,
    so extracting it over ``/`` leaves the image's directories and their modes as they are."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(files[path]), OVERLAY_MTIME
            info.mode = 0o755 if path.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(files[path]))
    return out.getvalue()


def mmdebstrap_argv(plan: ImagePlan, rootdir: Path, overlay_tar: Path) -> list[str]:
    """mmdebstrap into ``rootdir`` as root (real ownership for ``mkfs.ext4 -d``), then the overlay
    and the customize script. Paths go to the special hook through shell-style quoting, which
    mmdebstrap splits back with shellwords; nothing is run by a shell with them."""
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        "--include=" + ",".join(plan.packages),
        "--customize-hook=" + shlex.join(["tar-in", str(overlay_tar), "/"]),
        "--customize-hook=" + CUSTOMIZE_HOOK,
        plan.suite,
        str(rootdir),
        *(line for source in plan.sources for line in source.lines()),
    ]


def mkfs_argv(rootdir: Path, raw: Path, size_bytes: int) -> list[str]:
    """An ext4 file system of ``size_bytes`` in the new file ``raw``, filled from ``rootdir``."""
    return ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(rootdir), str(raw), f"{size_bytes // 1024}k"]


def convert_argv(raw: Path, qcow2: Path) -> list[str]:
    return ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)]


def disk_size_for(used_bytes: int) -> int:
    """The image's virtual size: room for the files plus slack, at least 2 GiB (labs grow it)."""
    wanted = max(MIN_DISK_BYTES, used_bytes * 5 // 4 + DISK_ALIGN)
    return -(-wanted // DISK_ALIGN) * DISK_ALIGN


@dataclass(frozen=True)
class BuiltImage:
    """A built image: the qcow2 and the files it boots with, as described by its manifest."""

    name: str
    path: Path
    kernel: Path
    initrd: Path
    cmdline: str
    suite: str
    packages: tuple[str, ...]
    sha512: str
    kernel_version: str

    @property
    def manifest_path(self) -> Path:
        return self.path.with_suffix(".json")

    def manifest(self) -> dict[str, Any]:
        """``NAME.json``: file names are relative to the manifest's directory."""
        return {
            "name": self.name,
            "format": "qcow2",
            "arch": "amd64",
            "file": self.path.name,
            "kernel": self.kernel.name,
            "initrd": self.initrd.name,
            "cmdline": self.cmdline,
            "suite": self.suite,
            "kernel_version": self.kernel_version,
            "packages": list(self.packages),
            "sha512": self.sha512,
        }

    def image_entry(self) -> dict[str, str]:
        """The image as a lab.yaml ``image:`` mapping (see :func:`labctl.lab.catalog.resolve_image`)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "format": "qcow2",
            "sha512": self.sha512,
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "cmdline": self.cmdline,
        }


def read_manifest(path: Path) -> BuiltImage:
    """Read ``NAME.json`` back; the files it names are taken from its directory."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return BuiltImage(
            name=data["name"],
            path=path.parent / data["file"],
            kernel=path.parent / data["kernel"],
            initrd=path.parent / data["initrd"],
            cmdline=data["cmdline"],
            suite=data["suite"],
            packages=tuple(data["packages"]),
            sha512=data["sha512"],
            kernel_version=data["kernel_version"],
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ImageError(f"cannot read image manifest {path}: {err}", "rebuild with `labctl image build`") from err


def run_command(argv: Sequence[str]) -> None:
    """The real ``run``: the command's output goes to stderr (progress), failures become ImageErrors."""
    try:
        subprocess.run(list(argv), check=True, stdin=subprocess.DEVNULL, stdout=2)  # fd 2: stdout is for data
    except FileNotFoundError as err:
        raise ImageError(f"{argv[0]} is not installed", "apt-get install mmdebstrap e2fsprogs qemu-utils") from err
    except subprocess.CalledProcessError as err:
        raise ImageError(f"{argv[0]} failed with exit status {err.returncode}", "see its output above") from err


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_image(
    name: str,
    out_dir: Path,
    mirror: str | None,
    suite: str,
    include: Iterable[str],
    run: Run = run_command,
    *,
    host_sources: Callable[[], Sequence[AptSource]] = read_host_sources,
    log: Log = _stderr,
) -> BuiltImage:
    """Build ``out_dir/NAME.qcow2`` (+ ``.vmlinuz``, ``.initrd``, ``.json``); needs root.

    ``mirror`` None means the host's configured Debian mirror (``host_sources()``, by default
    read from /etc/apt). Outputs appear only once complete; the work directory is removed.
    """
    plan = plan_image(name, suite, include, mirror, host_sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=out_dir))
    try:
        rootfs = work / "rootfs"
        with _phase(log, f"mmdebstrap {plan.suite}, {len(plan.packages)} packages"):
            _make_rootfs(plan, rootfs, work, run)
        kernel, initrd, version = _copy_boot_files(rootfs, work, name)
        with _phase(log, "ext4 file system and qcow2"):
            qcow2 = _make_disk(rootfs, work / f"{name}.qcow2", run)
        built = BuiltImage(
            name=name, path=qcow2, kernel=kernel, initrd=initrd, cmdline=plan.cmdline, suite=plan.suite,
            packages=plan.packages, sha512=file_sha512(qcow2), kernel_version=version,
        )
        return _publish(built, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _phase(log: Log, what: str) -> Iterator[None]:
    started = time.monotonic()
    log(f"image build: {what}…")
    yield
    log(f"image build: {what}: done in {time.monotonic() - started:.0f}s")


def _make_rootfs(plan: ImagePlan, rootfs: Path, work: Path, run: Run) -> None:
    overlay = work / "overlay.tar"
    overlay.write_bytes(render_overlay_tar(render_image_files()))
    run(mmdebstrap_argv(plan, rootfs, overlay))


def _copy_boot_files(rootfs: Path, work: Path, name: str) -> tuple[Path, Path, str]:
    """Copy the (one) installed kernel and its initrd out of the root filesystem."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageError(f"expected one kernel in the image's /boot, found {len(kernels)}", "check the package list")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = rootfs / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise ImageError(f"the image has no initrd for kernel {version}", "is initramfs-tools installed?")
    kernel_out, initrd_out = work / f"{name}.vmlinuz", work / f"{name}.initrd"
    shutil.copyfile(kernels[0], kernel_out)
    shutil.copyfile(initrd, initrd_out)
    return kernel_out, initrd_out, version


def _make_disk(rootfs: Path, qcow2: Path, run: Run) -> Path:
    raw = qcow2.with_suffix(".raw")
    run(mkfs_argv(rootfs, raw, disk_size_for(tree_size(rootfs))))
    run(convert_argv(raw, qcow2))
    raw.unlink()
    return qcow2


def tree_size(root: Path) -> int:
    """Bytes the files under ``root`` take (hard links once, 4 KiB per inode for metadata)."""
    seen: set[int] = set()
    total = 0
    for top, dirs, files in os.walk(root):
        for entry in (*dirs, *files):
            st = os.lstat(os.path.join(top, entry))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size + 4096
    return total


def file_sha512(path: Path) -> str:
    digester = Digester()
    digester.update_from_file(path)
    return digester.hexdigests()["sha512"]


def _publish(built: BuiltImage, out_dir: Path) -> BuiltImage:
    """Move the files into ``out_dir``; the manifest last, so its presence means a complete image."""
    final = dataclasses.replace(
        built, path=out_dir / built.path.name, kernel=out_dir / built.kernel.name, initrd=out_dir / built.initrd.name
    )
    final.manifest_path.unlink(missing_ok=True)  # an old manifest must not describe the new files
    for source, dest in ((built.path, final.path), (built.kernel, final.kernel), (built.initrd, final.initrd)):
        os.replace(source, dest)
    part = final.manifest_path.with_suffix(".json.part")
    part.write_text(json.dumps(final.manifest(), indent=2) + "\n", encoding="utf-8")
    os.replace(part, final.manifest_path)
    return final
