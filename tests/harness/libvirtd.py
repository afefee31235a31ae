"""A private, real libvirtd for tests: own network namespace, own mount namespace.

``PrivateLibvirtd(base_dir)`` creates a network namespace ``labctl-t-<hex>``
and starts our own ``virtlogd`` and ``libvirtd`` inside it, in a private mount
namespace where directories under ``base_dir`` are bind-mounted over
/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
/var/cache/libvirt, and /dev holds no kvm (guests must use TCG). Bridges,
iptables rules, dnsmasq and tap devices all live inside the namespace; all
files live under ``base_dir``, where the host reaches the unix socket
(``sock/``), the logs (``logs/``) and the pid files. Outside it only missing
mount points (e.g. an empty /var/lib/libvirt) are created::

    with PrivateLibvirtd(tmp_path) as daemon:
        conn = libvirt.open(daemon.uri)

Teardown (``stop()``, also run at interpreter exit) destroys every domain and
network through the API, ends leftover processes by the pids in their pid
files, the daemons by theirs, and deletes the namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import libvirt

START_SCRIPT = Path(__file__).with_name("start-daemons.sh")
REQUIRED_PROGRAMS = (
    "libvirtd", "virtlogd", "qemu-system-x86_64", "dnsmasq", "iptables", "ip", "unshare", "mount", "nsenter",
)
# sockaddr_un.sun_path is 108 bytes including the NUL.
_MAX_SOCKET_PATH = 107
_LONGEST_SOCKET_NAME = "libvirt-admin-sock"
_COMMAND_TIMEOUT = 30.0
_PRIVATE_MOUNT_NAMESPACE = ("unshare", "--mount", "--propagation", "private", "--")
QEMU_ACCOUNT = "libvirt-qemu"
QEMU_ACCOUNT_ID = 64055  # Debian's usual id for it; unused, only resolved

ConfValue = str | int | Sequence[str]
# libvirtd also listens on TCP, on the namespace's own loopback only: a URI with a host part is what
# labctl treats as a remote hypervisor (no console log to read: phases over ssh), reachable only
# from inside the namespace.
TCP_PORT = 16509


class HarnessError(RuntimeError):
    """The private libvirtd could not be started or stopped."""


def can_run() -> tuple[bool, str]:
    """Say whether a private libvirtd can run here, and if not, why not."""
    if os.geteuid() != 0:
        return False, "a private libvirtd needs root (network and mount namespaces)"
    missing = [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]
    if missing:
        return False, f"programs not found on PATH: {', '.join(missing)}"
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing (needed for guest NICs)"
    return True, "root, and libvirtd, virtlogd, qemu, dnsmasq and iptables are present"


def render_conf(settings: Mapping[str, ConfValue]) -> str:
    """Render libvirt's ``key = value`` configuration format."""
    return "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())


def _conf_value(value: ConfValue) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _conf_string(value)
    return "[ " + ", ".join(_conf_string(item) for item in value) + " ]"


def _conf_string(text: str) -> str:
    # libvirt's parser has no escapes: refuse what it cannot represent.
    if any(char in text for char in '"\\\n'):
        raise HarnessError(f"cannot put {text!r} into a libvirt config file")
    return f'"{text}"'


@dataclass(frozen=True)
class Layout:
    """Where everything of one private libvirtd lives under ``base``.

    ``root/{etc,run,lib,log,cache}`` back the daemons' /etc/libvirt, /run/libvirt
    and so on; ``run_dir`` (their /run/libvirt) holds qemu/*.pid and
    network/*.pid. The socket, logs and daemon pid files sit outside ``root``.
    """

    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.base / "sock" / "libvirt-sock"

    @property
    def log_dir(self) -> Path:
        return self.base / "logs"

    @property
    def env_file(self) -> Path:
        return self.base / "daemons.env"

    def pid_file(self, daemon: str) -> Path:
        return self.base / "pids" / f"{daemon}.pid"

    def directories(self) -> list[Path]:
        backing = [self.root / name for name in ("etc", "run", "lib", "log", "cache")]
        return [*backing, *(self.base / name for name in ("sock", "logs", "pids", "dev"))]


def daemon_files(layout: Layout, passwd: str, group: str) -> dict[Path, str]:
    """Every file the daemons get, by path, given the host's passwd and group texts."""
    passwd, group = with_libvirt_accounts(passwd, group)
    return {
        **daemon_configs(layout),
        layout.env_file: daemon_env(layout),
        layout.root / "passwd": passwd,
        layout.root / "group": group,
    }


def daemon_configs(layout: Layout) -> dict[Path, str]:
    """The contents of libvirtd.conf, virtlogd.conf and qemu.conf."""
    libvirtd: dict[str, ConfValue] = {
        "unix_sock_dir": str(layout.socket.parent),
        "unix_sock_rw_perms": "0700",
        "unix_sock_ro_perms": "0700",
        "unix_sock_admin_perms": "0700",
        "auth_unix_rw": "none",
        "auth_unix_ro": "none",
        "listen_tls": 0,
        "listen_tcp": 1,
        "listen_addr": "127.0.0.1",
        "tcp_port": str(TCP_PORT),
        "auth_tcp": "none",
        "log_outputs": f"3:file:{layout.log_dir / 'libvirtd.log'}",
    }
    virtlogd = {"log_outputs": f"3:file:{layout.log_dir / 'virtlogd.log'}"}
    # qemu runs as root without a security driver, cgroups or per-domain
    # namespaces: the tmp dirs need no relabelling and nothing host-wide changes.
    qemu: dict[str, ConfValue] = {
        "user": "root",
        "group": "root",
        "dynamic_ownership": 0,
        "remember_owner": 0,
        "security_driver": "none",
        "cgroup_controllers": [],
        "namespaces": [],
        "stdio_handler": "logd",
    }
    return {
        layout.root / "etc" / "libvirtd.conf": render_conf(libvirtd),
        layout.root / "etc" / "virtlogd.conf": render_conf(virtlogd),
        layout.root / "etc" / "qemu.conf": render_conf(qemu),
    }


def daemon_env(layout: Layout) -> str:
    """The env file that start-daemons.sh reads (KEY=VALUE lines)."""
    if "\n" in str(layout.base):
        raise HarnessError(f"base dir must not contain a newline: {layout.base!r}")
    values = {
        "LIBVIRT_ETC": layout.root / "etc",
        "LIBVIRT_RUN": layout.run_dir,
        "LIBVIRT_LIB": layout.root / "lib",
        "LIBVIRT_LOG": layout.root / "log",
        "LIBVIRT_CACHE": layout.root / "cache",
        "DEV_STAGE": layout.base / "dev",
        "VIRTLOGD_CONF": layout.root / "etc" / "virtlogd.conf",
        "VIRTLOGD_PID": layout.pid_file("virtlogd"),
        "LIBVIRTD_CONF": layout.root / "etc" / "libvirtd.conf",
        "LIBVIRTD_PID": layout.pid_file("libvirtd"),
        "PASSWD_FILE": layout.root / "passwd",
        "GROUP_FILE": layout.root / "group",
    }
    return "".join(f"{key}={path}\n" for key, path in values.items())


def with_libvirt_accounts(passwd: str, group: str) -> tuple[str, str]:
    """passwd and group texts plus the libvirt-qemu user and group, if missing.

    Debian's libvirtd resolves its built-in default user ``libvirt-qemu``
    before reading qemu.conf and fails without it. That account comes with
    libvirt-daemon-system, which would also start a system libvirtd, so the
    daemons get it from private copies of the files instead. Nothing ever
    runs as it: qemu.conf says root.
    """
    passwd_line = f"{QEMU_ACCOUNT}:x:{QEMU_ACCOUNT_ID}:{QEMU_ACCOUNT_ID}::/nonexistent:/usr/sbin/nologin"
    group_line = f"{QEMU_ACCOUNT}:x:{QEMU_ACCOUNT_ID}:"
    return _with_line(passwd, passwd_line), _with_line(group, group_line)


def _with_line(text: str, line: str) -> str:
    name = line.split(":", 1)[0]
    if any(entry.split(":", 1)[0] == name for entry in text.splitlines()):
        return text
    separator = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{separator}{line}\n"


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None if the file is missing or not a pid."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return len(fields) == 2 and fields[1].split()[0] not in ("Z", "X")


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _run(argv: Sequence[str], timeout: float = _COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=True)


class PrivateLibvirtd:
    """A libvirtd of our own in a fresh network namespace; see the module docstring."""

    def __init__(self, base_dir: Path, *, start_timeout: float = 60.0, stop_timeout: float = 15.0) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.netns = f"labctl-t-{secrets.token_hex(4)}"
        self.layout = Layout(self.base_dir)
        self.uri = f"qemu+unix:///system?socket={self.layout.socket}"
        self.tcp_uri = f"qemu+tcp://127.0.0.1:{TCP_PORT}/system"  # from inside the namespace only
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._pids: set[int] = set()
        self._netns_inode: tuple[int, int] | None = None
        self._running = False
        self._lock = threading.Lock()

    def __enter__(self) -> PrivateLibvirtd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PrivateLibvirtd:
        """Create the namespace and start virtlogd and libvirtd in it."""
        if self._running:
            raise HarnessError(f"{self.netns} is already running")
        self._prepare_files()
        self._running = True
        atexit.register(self.stop)
        try:
            self._create_netns()
            self._launch_daemons()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def run_in_netns(
        self, argv: Sequence[str], timeout: float = _COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace (host mounts, not the daemons')."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Tear everything down; safe to call more than once, and after a failed start."""
        with self._lock:
            if not self._running:
                return
            try:
                errors = self._teardown()
            finally:
                self._running = False
                atexit.unregister(self.stop)
            first = next((error for error in errors if error is not None), None)
            if first is not None:
                raise HarnessError(f"teardown of {self.netns} incomplete: {first}") from first

    def restart_libvirtd(self) -> None:
        """End libvirtd by its pid and start it again in the same namespaces (a daemon fault).

        virtlogd and the guests keep running; the new libvirtd reconnects to them."""
        virtlogd = read_pid(self.layout.pid_file("virtlogd"))
        if virtlogd is None or not self._in_our_netns(virtlogd):
            raise HarnessError("virtlogd is not running; cannot enter its namespaces")
        self._terminate(self._daemon_pids("libvirtd"))
        _wait_gone(self._daemon_pids("libvirtd"), self.stop_timeout, reaped=True)
        _run(["nsenter", f"--target={virtlogd}", "--mount", "--net", "--",
              "libvirtd", "--daemon", "--config", str(self.layout.root / "etc" / "libvirtd.conf"),
              "--pid-file", str(self.layout.pid_file("libvirtd"))], timeout=self.start_timeout)
        self._record_daemon_pids()
        self._wait_until_ready()

    def recorded_pids(self) -> frozenset[int]:
        """Every pid this harness has seen so far: daemons, qemu, dnsmasq."""
        self._record_child_pids()
        return frozenset(self._pids)

    # -- start -------------------------------------------------------------

    def _prepare_files(self) -> None:
        longest = self.layout.socket.parent / _LONGEST_SOCKET_NAME
        if len(os.fsencode(longest)) > _MAX_SOCKET_PATH:
            raise HarnessError(f"base dir too long for a unix socket path: {longest}")
        for directory in self.layout.directories():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        passwd, group = (Path("/etc", name).read_text(encoding="utf-8") for name in ("passwd", "group"))
        for path, text in daemon_files(self.layout, passwd, group).items():
            path.write_text(text, encoding="utf-8")

    def _create_netns(self) -> None:
        _run(["ip", "netns", "add", self.netns])
        info = os.stat(f"/run/netns/{self.netns}")
        self._netns_inode = (info.st_dev, info.st_ino)
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])

    def _launch_daemons(self) -> None:
        argv = [*_PRIVATE_MOUNT_NAMESPACE, "bash", str(START_SCRIPT), str(self.layout.env_file)]
        result = self.run_in_netns(argv, timeout=self.start_timeout, check=False)
        (self.layout.log_dir / "start.log").write_text(result.stdout + result.stderr, encoding="utf-8")
        self._record_daemon_pids()
        if result.returncode != 0:
            raise HarnessError(f"start-daemons.sh exited {result.returncode}:\n{self._logs()}")

    def _wait_until_ready(self) -> None:
        """Bounded wait for the socket, then one API call that must succeed."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if _is_socket(self.layout.socket):
                error = _bounded(_probe, self.uri, timeout=deadline - time.monotonic())
                if error is None:
                    return
                raise HarnessError(f"libvirtd does not answer ({error}):\n{self._logs()}")
            pid = read_pid(self.layout.pid_file("libvirtd"))
            if pid is None or not is_alive(pid):
                raise HarnessError(f"libvirtd is not running:\n{self._logs()}")
            time.sleep(0.1)
        raise HarnessError(f"no socket at {self.layout.socket} after {self.start_timeout:.0f}s:\n{self._logs()}")

    def _logs(self) -> str:
        names = ("start.log", "virtlogd.log", "libvirtd.log")
        return "\n".join(f"--- {name}\n{tail(self.layout.log_dir / name)}" for name in names)

    # -- stop --------------------------------------------------------------

    def _teardown(self) -> list[Exception | None]:
        """Every step runs even if an earlier one failed; returns their errors."""
        self._record_child_pids()
        self._destroy_through_api()
        errors = [
            _attempt(self._terminate, self._child_pids()),
            _attempt(self._terminate, self._daemon_pids("libvirtd")),
            _attempt(self._terminate, self._daemon_pids("virtlogd")),
            # Safety net, by namespace (never by name): whatever still lives in it.
            _attempt(self._terminate, _all_pids()),
            _attempt(self._delete_netns),
        ]
        # Our pid 1 may reap orphans slowly; wait so that `ps` afterwards is clean.
        _wait_gone(self._pids, self.stop_timeout, reaped=True)
        return errors

    def _record_daemon_pids(self) -> None:
        for daemon in ("virtlogd", "libvirtd"):
            self._pids.update(self._daemon_pids(daemon))

    def _daemon_pids(self, daemon: str) -> list[int]:
        pid = read_pid(self.layout.pid_file(daemon))
        return [pid] if pid is not None else []

    def _child_pids(self) -> list[int]:
        """qemu and dnsmasq pids from the pid files libvirtd keeps in /run/libvirt."""
        files = [*self.layout.run_dir.glob("qemu/*.pid"), *self.layout.run_dir.glob("network/*.pid")]
        # driver.pid there is libvirtd's own lock file, not a child's.
        pids = (read_pid(path) for path in files if path.name != "driver.pid")
        return [pid for pid in pids if pid is not None]

    def _record_child_pids(self) -> None:
        self._pids.update(self._child_pids())

    def _destroy_through_api(self) -> None:
        """Destroy active domains and networks, bounded: a wedged daemon is killed next."""
        if not _is_socket(self.layout.socket):
            return
        _bounded(_destroy_all, self.uri, timeout=self.stop_timeout)

    def _terminate(self, pids: Iterable[int]) -> None:
        """SIGTERM, wait, SIGKILL: only pids that still live in our namespace."""
        ours = [pid for pid in pids if self._in_our_netns(pid)]
        self._pids.update(ours)
        _signal_all(ours, signal.SIGTERM)
        if not _wait_gone(ours, self.stop_timeout):
            _signal_all(ours, signal.SIGKILL)
            if not _wait_gone(ours, self.stop_timeout):
                raise HarnessError(f"pids {ours} survived SIGKILL")

    def _in_our_netns(self, pid: int) -> bool:
        # Guards against a recycled pid in a stale pid file.
        try:
            info = os.stat(f"/proc/{pid}/ns/net")
        except OSError:  # gone, or a process we may not even inspect
            return False
        return (info.st_dev, info.st_ino) == self._netns_inode and is_alive(pid)

    def _delete_netns(self) -> None:
        if os.path.exists(f"/run/netns/{self.netns}"):
            _run(["ip", "netns", "del", self.netns])


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except FileNotFoundError:
        return False


def _bounded(call: Callable[[str], None], uri: str, timeout: float) -> Exception | None:
    """Run a libvirt call in a thread so a wedged daemon cannot hang us."""
    outcome: list[Exception | None] = []

    def worker() -> None:
        try:
            call(uri)
        except libvirt.libvirtError as error:
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(max(timeout, 0.0))
    return outcome[0] if outcome else TimeoutError(f"no answer within {timeout:.0f}s")


def _probe(uri: str) -> None:
    with _connection(uri) as conn:
        conn.getLibVersion()


def _destroy_all(uri: str) -> None:
    with contextlib.suppress(libvirt.libvirtError), _connection(uri) as conn:
        for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()
        for network in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
            with contextlib.suppress(libvirt.libvirtError):
                network.destroy()


@contextlib.contextmanager
def _connection(uri: str) -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(uri)
    try:
        yield conn
    finally:
        conn.close()


def _attempt(step: Callable[..., None], *args: object) -> Exception | None:
    try:
        step(*args)
    except (HarnessError, OSError, subprocess.SubprocessError) as error:
        return error
    return None


def _signal_all(pids: Iterable[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_gone(pids: Iterable[int], timeout: float, *, reaped: bool = False) -> bool:
    """Wait until no pid is alive (with ``reaped``: until none is even a zombie)."""
    still_there = (lambda pid: os.path.exists(f"/proc/{pid}")) if reaped else is_alive
    deadline = time.monotonic() + timeout
    while any(still_there(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
