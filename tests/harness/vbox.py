"""The real VirtualBox ``VBoxManage`` for tests, in a cached Debian sid chroot.

Debian ships VirtualBox 7 in sid's contrib only, built against sid's glibc and Python, so it runs
from a chroot that :func:`ensure_chroot` builds once with mmdebstrap (from the host's own Debian
mirror) and caches under ``$LABCTL_TEST_CACHE/vbox-chroot-<key>`` (default
``/var/cache/labctl-tests``), the key being a digest of the build inputs. The build goes into a
temporary directory that is renamed when complete, under a lock: two runs never build at once,
and a directory under the final name is always whole.

:class:`VBoxHarness` gives a test run a private mount namespace (held open by
``vbox-namespace.sh``) in which the chroot has /proc, /dev and /sys, a private tmpfs on /tmp
(VirtualBox's IPC sockets: this run's VBoxSVC is its own) and one work directory mounted at the
same path as on the host, so the paths labctl hands VBoxManage (disks, ISOs, serial logs) mean the
same file on both sides. ``VBOX_USER_HOME`` lies inside it. ``harness.run(argv)`` runs the real
``/usr/lib/virtualbox/VBoxManage`` there; ``harness.wrapper`` is an executable that does the same,
for code that looks VBoxManage up through ``LABCTL_VBOXMANAGE``::

    with VBoxHarness(ensure_chroot()) as vbox:
        code, out, err = vbox.run(["VBoxManage", "list", "vms"])

Teardown ends the VirtualBox processes of this namespace by their pids (found through /proc: the
namespace and root of each), lets the namespace go (its mounts go with it: none are ever made in
the host's namespace) and removes the work directory. Nothing VirtualBox needs a kernel driver for
works here: ``startvm`` and ``hostonlyif create`` fail, every configuration command works.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import pytest

from labctl.image.aptsources import image_sources, read_host_sources

SUITE = "sid"
COMPONENTS = ("main", "contrib")
PACKAGES = ("virtualbox", "virtualbox-dkms")
# The mirror here is a frozen copy: its Release files are past their Valid-Until.
APT_OPTIONS = ('Apt::Install-Recommends "false"', 'Acquire::Check-Valid-Until "false"')
VBOXMANAGE_IN_CHROOT = "/usr/lib/virtualbox/VBoxManage"  # not /usr/bin's wrapper: it warns on stdout
REQUIRED_PROGRAMS = ("mmdebstrap", "unshare", "nsenter", "chroot", "mount")
NAMESPACE_SCRIPT = Path(__file__).with_name("vbox-namespace.sh")
WRAPPER_SCRIPT = Path(__file__).with_name("vboxmanage")
BUILD_FORMAT = 1  # bump to rebuild every cached chroot
DEFAULT_CACHE = "/var/cache/labctl-tests"
BUILD_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 600.0
PRIVATE_MOUNTS = ("unshare", "--mount", "--propagation", "private", "--")

class HarnessError(RuntimeError):
    """The VirtualBox chroot could not be built, or the harness not started or stopped."""


def can_run() -> tuple[bool, str]:
    """Say whether the harness can run here, and if not, why not."""
    if os.geteuid() != 0:
        return False, "the VirtualBox chroot needs root (mmdebstrap, mount namespaces, chroot)"
    missing = [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]
    if missing:
        return False, f"programs not found on PATH: {', '.join(missing)} (apt-get install mmdebstrap util-linux)"
    return True, "root, with mmdebstrap, unshare, nsenter and chroot"


def unavailable(why: str, ci: bool) -> NoReturn:
    """Skip a test that needs the harness, saying why; under CI (env ``CI``) fail it instead."""
    print(f"NOTE: no real VBoxManage ({why})")
    if ci:
        pytest.fail(f"CI must run the VirtualBox tests, but the harness cannot run here: {why}")
    pytest.skip(f"no real VBoxManage here ({why})")


def cache_dir() -> Path:
    return Path(os.environ.get("LABCTL_TEST_CACHE") or DEFAULT_CACHE)


def host_mirror() -> str:
    """``LABCTL_TEST_VBOX_MIRROR``, else the Debian mirror the host's apt sources name."""
    if explicit := os.environ.get("LABCTL_TEST_VBOX_MIRROR"):
        return explicit.rstrip("/")
    sources = image_sources(read_host_sources(), SUITE)
    return next(source.uri for source in sources if SUITE in source.suites)


def mmdebstrap_argv(target: Path, mirror: str) -> list[str]:
    """The build of the chroot; its mounts stay in a private namespace (see :func:`build_chroot`)."""
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        f"--components={','.join(COMPONENTS)}",
        *(f"--aptopt={option}" for option in APT_OPTIONS),
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(target),
        " ".join(("deb", mirror, SUITE, *COMPONENTS)),
    ]


def chroot_key(mirror: str) -> str:
    """A digest of everything the chroot is built from."""
    inputs = {"format": BUILD_FORMAT, "argv": mmdebstrap_argv(Path("TARGET"), mirror)}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def ensure_chroot(
    cache: Path | None = None,
    mirror: str | None = None,
    log: Callable[[str], None] = print,
    build: Callable[[Path, str, Callable[[str], None]], None] | None = None,
) -> Path:
    """The cached chroot for these inputs, built first if missing (one build at a time)."""
    cache = cache or cache_dir()
    mirror = mirror or host_mirror()
    final = cache / f"vbox-chroot-{chroot_key(mirror)}"
    if _complete(final):
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache / "vbox-chroot.lock", log):
        if not _complete(final):  # another run may have built it while we waited
            (build or build_chroot)(final, mirror, log)
    return final


def _complete(root: Path) -> bool:
    return (root / VBOXMANAGE_IN_CHROOT.lstrip("/")).is_file()


@contextlib.contextmanager
def _exclusive(lock_path: Path, log: Callable[[str], None]) -> Iterator[None]:
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another run's VirtualBox chroot build ({lock_path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_chroot(
    final: Path, mirror: str, log: Callable[[str], None] = print, run: Callable[..., Any] = subprocess.run
) -> None:
    """mmdebstrap into ``<final>.partial`` (whatever a killed build left there goes first),
    then rename it to ``final``. Call with the cache lock held."""
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        _refuse_mounted(partial)
        shutil.rmtree(partial)
    argv = mmdebstrap_argv(partial, mirror)
    log(f"building the VirtualBox chroot (a few minutes, once): {shlex.join(argv)}")
    started = time.monotonic()
    result = run([*PRIVATE_MOUNTS, *argv], capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0 or not _complete(partial):
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-20:])
        raise HarnessError(f"mmdebstrap failed (exit {result.returncode}):\n{tail}")
    partial.rename(final)
    log(f"VirtualBox chroot built in {time.monotonic() - started:.0f} s: {final}")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or under ``path`` in this process's mount namespace."""
    prefix = str(path).rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def _refuse_mounted(path: Path) -> None:
    if points := mounts_under(path):
        raise HarnessError(f"refusing to remove {path}: mounted there: {', '.join(points)}")


class VBoxHarness:
    """One test run's private namespace around the cached chroot; see the module docstring."""

    def __init__(self, root: Path, *, stop_timeout: float = 10.0) -> None:
        self.root = Path(root).resolve()
        self.stop_timeout = stop_timeout
        self.work = Path()
        self._holder: subprocess.Popen[str] | None = None
        self._namespace = ""  # "mnt:[inode]" of our namespace, while the holder keeps it alive

    @property
    def home(self) -> Path:
        """``VBOX_USER_HOME``: VirtualBox.xml, VBoxSVC.log."""
        return self.work / "vbox-home"

    @property
    def wrapper(self) -> Path:
        """An executable that runs the real VBoxManage here (for ``LABCTL_VBOXMANAGE``)."""
        return self.work / "VBoxManage"

    def __enter__(self) -> VBoxHarness:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> VBoxHarness:
        if self._holder is not None:
            raise HarnessError("the VirtualBox harness is already running")
        # Under /tmp: its mount point inside the chroot is then made on the private tmpfs.
        self.work = Path(tempfile.mkdtemp(prefix="lcvbox-", dir="/tmp"))
        self.home.mkdir()
        atexit.register(self.stop)
        try:
            self._start_holder()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_holder(self) -> None:
        settings = {"ROOT": self.root, "WORK": self.work, "VBOX_USER_HOME": self.home}
        self._write_env(settings)
        self._holder = subprocess.Popen(
            [*PRIVATE_MOUNTS, str(NAMESPACE_SCRIPT), str(self.work / "harness.env")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self._holder.stdout is not None
        ready = self._holder.stdout.readline().strip()
        if ready != "ready":
            _, errors = self._holder.communicate(timeout=10)
            self._holder = None
            raise HarnessError(f"vbox-namespace.sh did not start: {errors.strip()}")
        self._namespace = os.readlink(f"/proc/{self._holder.pid}/ns/mnt")
        self._write_env({**settings, "NAMESPACE_PID": self._holder.pid})
        self.wrapper.symlink_to(WRAPPER_SCRIPT)

    def _write_env(self, settings: dict[str, object]) -> None:
        lines = [f"{key}={value}" for key, value in settings.items()]
        if any("\n" in line for line in lines):
            raise HarnessError(f"paths must not contain a newline: {settings}")
        (self.work / "harness.env").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
        """Run VBoxManage with ``argv`` (``["VBoxManage", ...]`` or just the arguments):
        (exit code, stdout, stderr)."""
        if self._holder is None:
            raise HarnessError("the VirtualBox harness is not running")
        args = list(argv)
        if args and Path(args[0]).name.lower() == "vboxmanage":
            args = args[1:]
        result = subprocess.run([str(self.wrapper), *args], capture_output=True, text=True, errors="replace",
                                timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        return result.returncode, result.stdout, result.stderr

    def processes(self) -> dict[int, str]:
        """pid → command line of every process in our namespace and chroot (VBoxSVC, and
        VBoxManage or VBoxXPCOMIPCD where they run), the holder aside."""
        found: dict[int, str] = {}
        holder = self._holder.pid if self._holder else None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == holder:
                continue
            try:
                if os.readlink(entry / "ns/mnt") != self._namespace or os.readlink(entry / "root") != str(self.root):
                    continue
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:  # gone meanwhile, or a kernel thread
                continue
        return found

    def stop(self) -> None:
        """End our VirtualBox processes by pid, let the namespace go, remove the work directory.
        Safe to call twice and after a failed start."""
        atexit.unregister(self.stop)
        if self._holder is not None:
            if self._namespace:
                self.end_processes()
            self._release_holder()
        if self.work != Path() and self.work.exists():
            _refuse_mounted(self.work)
            shutil.rmtree(self.work)
        self.work = Path()

    def end_processes(self) -> None:
        """SIGTERM, then SIGKILL, every process :meth:`processes` finds. The next VBoxManage call
        starts a new VBoxSVC, which reads VirtualBox.xml afresh (as after a host restart)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + self.stop_timeout
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
        if left := self.processes():
            raise HarnessError(f"VirtualBox processes survived SIGKILL: {left}")

    def _release_holder(self) -> None:
        holder, self._holder = self._holder, None
        assert holder is not None
        with contextlib.suppress(BrokenPipeError):
            if holder.stdin:
                holder.stdin.close()
        try:
            holder.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(timeout=self.stop_timeout)
        for stream in (holder.stdout, holder.stderr):
            if stream:
                stream.close()
        self._namespace = ""
