"""A network namespace of a test's own, with one (portless) bridge carrying an address that exists
only inside it (as the host side of a lab's NAT network does in the private libvirtd's namespace).

Traffic to that address never leaves the namespace. ``delete()`` ends by pid whatever still runs
in the namespace (only the test's own processes can be there) and deletes it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence

COMMAND_TIMEOUT = 30.0


class TestNetns:
    """``with TestNetns("10.213.254.1/24") as ns: ns.run([...])``."""

    __test__ = False  # not a pytest class

    def __init__(self, address: str, prefix: str = "lc-apt") -> None:
        self.interface = ipaddress.ip_interface(address)
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self._created = False

    @property
    def address(self) -> str:
        return str(self.interface.ip)

    def __enter__(self) -> TestNetns:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def create(self) -> None:
        _run(["ip", "netns", "add", self.name])
        self._created = True
        try:
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
            _run(["ip", "-n", self.name, "link", "add", "lab0", "type", "bridge"])
            _run(["ip", "-n", self.name, "addr", "add", str(self.interface), "dev", "lab0"])
            _run(["ip", "-n", self.name, "link", "set", "lab0", "up"])
        except BaseException:
            self.delete()
            raise

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_argv(argv), capture_output=True, text=True, timeout=timeout, check=check,
                              stdin=subprocess.DEVNULL, env=env)

    def listens(self, port: int) -> bool:
        return listens_in(self.name, port)

    def pids(self) -> list[int]:
        if not self._created:
            return []
        out = _run(["ip", "netns", "pids", self.name]).stdout
        return [int(word) for word in out.split()]

    def delete(self, timeout: float = 10.0) -> None:
        if not self._created:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + timeout
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        _run(["ip", "netns", "del", self.name])
        self._created = False


def listens_in(netns: str, port: int) -> bool:
    """Whether something listens on TCP ``port`` inside the namespace ``netns``."""
    result = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}"],
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    return bool(result.stdout.strip())


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=True)
