"""A caching proxy for Debian packages (apt-cacher-ng) on the host, carried into a test's network
namespace, so that VMs in there reach the host's own Debian mirror, and only that.

::

    VM ── http://ADDR:3142/debian/… ──► socat (in the namespace, TCP-LISTEN ADDR:3142)
          ──► unix socket (a file: the same from either namespace)
          ──► socat (host) ──► apt-cacher-ng on the host's 127.0.0.1:PORT ──► the host's mirror

No address of any private range is used in the host's namespace: the namespace side listens on
an address that exists only in there (the lab NAT network's host side, or any address of the
namespace with ``bind="0.0.0.0"``, which also works before libvirt has made that network), and
the host side is loopback plus a unix socket. apt-cacher-ng cannot serve HTTP on a unix socket
alone (its ``SocketPath`` speaks its own protocol to acngtool and in.acng, and ``Port: 0`` does not
turn TCP off in 3.7.4), hence the host-side socat. Version 3.7.4 also fails to bind ports above
32767 ("Error resolving address for binding"), so the port is picked below that.

The VMs' mirror URLs name no host: ``http://ADDR:3142/debian`` and ``http://ADDR:3142/debian-security``,
which the proxy remaps (``Remap-…`` lines) to the host's configured mirrors, read from its apt
sources (:func:`labctl.image.aptsources.read_host_sources`). Nothing else is proxied: requests for other
URLs (``ForceManaged``) and CONNECT tunnels are refused.

The cache lives in ``$LABCTL_TEST_CACHE/apt-cacher-ng`` (default /var/cache/labctl-tests), kept
between runs so that a second run is warm; a run that finds it in use by another falls back to a
cache of its own under its state dir (cold) and says so. Every process is ended by its pid
(:mod:`tests.harness.procs`).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from labctl.image.aptsources import AptSource, image_sources, read_host_sources
from labctl.lab.lock import BusyError, host_lock
from tests.harness.netns import TestNetns, listens_in
from tests.harness.procs import Started

PROXY_PORT = 3142  # what the VMs use, inside the namespace (apt-cacher-ng's usual port)
ARCHIVES = ("debian", "debian-security")
MAX_ACNG_PORT = 32767
START_TIMEOUT = 20.0
CACHE_LOCK_TIMEOUT = 5.0
REQUIRED_PROGRAMS = ("apt-cacher-ng", "socat", "ip")


def cache_root() -> Path:
    return Path(os.environ.get("LABCTL_TEST_CACHE", "/var/cache/labctl-tests"))


def can_run() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "the namespace bridge needs root (ip netns)"
    missing = [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]
    if missing:
        return False, f"programs not found on PATH: {', '.join(missing)} (./.ci/apt-install apt-cacher-ng socat)"
    return True, "root, apt-cacher-ng and socat are present"


def debian_mirrors(host: Sequence[AptSource], suite: str) -> dict[str, str]:
    """Archive (``debian``, ``debian-security``) -> the host's mirror URI serving ``suite`` (resp.
    ``suite-security``). A host without a security source gets no ``debian-security``."""
    uris: dict[str, str] = {}
    for source in image_sources(host, suite):
        if suite in source.suites:
            uris.setdefault("debian", source.uri)
        if f"{suite}-security" in source.suites:
            uris.setdefault("debian-security", source.uri)
    return uris


@dataclass(frozen=True)
class ProxyLayout:
    """Where one proxy's files live: config, logs and sockets under ``state``, the cache in ``cache``."""

    state: Path
    cache: Path

    @property
    def conf_dir(self) -> Path:
        return self.state / "conf"

    @property
    def log_dir(self) -> Path:
        return self.state / "log"

    @property
    def admin_socket(self) -> Path:
        return self.state / "acng.sock"

    @property
    def bridge_socket(self) -> Path:
        return self.state / "bridge.sock"


def render_config(layout: ProxyLayout, port: int, mirrors: Mapping[str, str]) -> dict[Path, str]:
    """acng.conf and one backends file per archive, by path."""
    if not 0 < port <= MAX_ACNG_PORT:
        raise ValueError(f"apt-cacher-ng 3.7 cannot bind port {port} (1..{MAX_ACNG_PORT})")
    settings = {
        "CacheDir": str(layout.cache),
        "LogDir": str(layout.log_dir),
        "SupportDir": "/usr/lib/apt-cacher-ng",
        "BindAddress": "127.0.0.1",
        "Port": str(port),
        "SocketPath": str(layout.admin_socket),
        "ForeGround": "1",
        "ForceManaged": "1",  # only the remapped archives below, never a URL a client names
        "PassThroughPattern": "^$",  # no CONNECT tunnels
        "UnbufferLogs": "1",
        "VerboseLog": "1",
        "ExThreshold": "4",
    }
    lines = [f"{key}: {value}" for key, value in settings.items()]
    files = {}
    for archive, uri in mirrors.items():
        if archive not in ARCHIVES or any(c in uri for c in " \n;#"):
            raise ValueError(f"cannot proxy {archive!r} from {uri!r}")
        backends = f"backends_{archive.replace('-', '_')}"
        lines.append(f"Remap-{_remap_name(archive)}: /{archive} ; file:{backends}")
        files[layout.conf_dir / backends] = uri.rstrip("/") + "/\n"
    return {layout.conf_dir / "acng.conf": "\n".join(lines) + "\n", **files}


def pick_port(low: int = 20000, high: int = MAX_ACNG_PORT, tries: int = 50) -> int:
    """A port free on 127.0.0.1, at random in [low, high] (another run may hold one)."""
    for _ in range(tries):
        port = random.randint(low, high)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on 127.0.0.1 in {low}..{high} after {tries} tries")


class AptProxy:
    """apt-cacher-ng on 127.0.0.1:``port`` plus the host half of the bridge (a unix socket).

    ``with AptProxy(state_dir, mirrors) as proxy: proxy.bridge_into(netns, bind)``; the namespace
    halves end with the proxy."""

    def __init__(self, state: Path, mirrors: Mapping[str, str] | None = None, suite: str = "trixie",
                 host_sources: Callable[[], Sequence[AptSource]] = read_host_sources) -> None:
        self.mirrors = dict(mirrors) if mirrors is not None else debian_mirrors(host_sources(), suite)
        self.state = state
        self.layout = ProxyLayout(state, cache_root() / "apt-cacher-ng")
        self.port = 0
        self.shared_cache = True
        self._processes: list[Started] = []
        self._stack = ExitStack()

    def __enter__(self) -> AptProxy:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._take_cache()
        for directory in (self.layout.conf_dir, self.layout.log_dir, self.layout.cache):
            directory.mkdir(parents=True, exist_ok=True)
        self.port = pick_port()
        for path, text in render_config(self.layout, self.port, self.mirrors).items():
            path.write_text(text, encoding="utf-8")
        acng = self._started(["apt-cacher-ng", "-c", str(self.layout.conf_dir)], "apt-cacher-ng.out")
        acng.wait_until(lambda: _accepts(self.port), START_TIMEOUT, f"listener on 127.0.0.1:{self.port}")
        self.layout.bridge_socket.unlink(missing_ok=True)
        host_half = self._started(
            ["socat", f"UNIX-LISTEN:{self.layout.bridge_socket},fork,mode=600", f"TCP:127.0.0.1:{self.port}"],
            "socat-host.out")
        host_half.wait_until(self.layout.bridge_socket.is_socket, START_TIMEOUT, "bridge socket")

    def bridge_into(self, netns: TestNetns | str, bind: str = "0.0.0.0", port: int = PROXY_PORT) -> str:
        """Listen on ``bind:port`` inside ``netns`` (a :class:`TestNetns` or a namespace's name);
        returns the mirror base URL for VMs there (``…/debian``, ``…/debian-security`` under it)."""
        name = netns.name if isinstance(netns, TestNetns) else netns
        inside = self._started(
            ["ip", "netns", "exec", name, "socat", f"TCP-LISTEN:{port},bind={bind},fork,reuseaddr",
             f"UNIX-CONNECT:{self.layout.bridge_socket}"], f"socat-{name}.out")
        inside.wait_until(lambda: listens_in(name, port), START_TIMEOUT, f"listener on {bind}:{port} in {name}")
        return f"http://{bind}:{port}"

    def upstream_fetches(self, path: str) -> int:
        """How many times the proxy fetched ``path`` (e.g. ``debian/pool/…``) from the mirror:
        the ``I`` lines of its transfer log (``O`` lines are what it served)."""
        archive, _, rest = path.lstrip("/").partition("/")
        wanted = f"{_remap_name(archive)}/{rest}"
        log = self.layout.log_dir / "apt-cacher.log"
        if not log.exists():
            return 0
        entries = (line.split("|") for line in log.read_text(errors="replace").splitlines())
        return sum(1 for fields in entries if len(fields) >= 5 and fields[1] == "I" and fields[4] == wanted)

    def process_groups(self) -> list[int]:
        """The process groups (= leader pids) of apt-cacher-ng and both halves of the bridge."""
        return [process.pid for process in self._processes]

    def stop(self) -> None:
        self._stack.close()

    def _started(self, argv: list[str], log_name: str) -> Started:
        process = Started(argv, self.layout.log_dir / log_name)
        self._stack.callback(process.stop)
        self._processes.append(process)
        return process.start()

    def _take_cache(self) -> None:
        """Hold the shared cache for this proxy's lifetime, or use a private one if it is busy."""
        try:
            self._stack.enter_context(host_lock(self.layout.cache.parent / ".apt-cacher-ng.lock",
                                                timeout=CACHE_LOCK_TIMEOUT))
        except BusyError:
            print(f"NOTE: {self.layout.cache} is held by another proxy; this one starts with an empty cache")
            self.layout = ProxyLayout(self.state, self.state / "cache")
            self.shared_cache = False


def _remap_name(archive: str) -> str:
    # apt-cacher-ng files a remapped archive under the name of its Remap- line.
    return archive.replace("-", "")


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0

