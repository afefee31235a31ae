"""Long-running helper processes of the tests, each started in a session of its own and ended by its
pid: SIGTERM to its process group (so the children a forking server such as ``socat fork`` made go
too), a bounded wait, then SIGKILL. Never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ProcessError(RuntimeError):
    """A helper process did not start or would not end."""


class Started:
    """``Started(argv, log).start()``: output to ``log``; ``stop()`` is safe to call more than once."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self.argv, self.log = list(argv), log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ProcessError(f"{self.argv[0]} was never started")
        return self.proc.pid

    def start(self) -> Started:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready()`` until true; fail if the process exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running():
                raise ProcessError(f"{self.argv[0]} exited before {what}:\n{self.tail()}")
            if time.monotonic() >= deadline:
                raise ProcessError(f"{self.argv[0]}: no {what} after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        group = self.proc.pid  # start_new_session: the group's id is the leader's pid
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
            if wait_group_gone(group, timeout):
                return
        raise ProcessError(f"process group {group} ({self.argv[0]}) survived SIGKILL")


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid`` (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
