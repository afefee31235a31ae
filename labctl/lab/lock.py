"""One command at a time per lab: an fcntl lock on a file in the lab's state dir.

The kernel drops the lock when its holder dies, so a lock left by a killed labctl is simply
taken over; the file's content (pid, command) only serves the "busy" message.
"""

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labctl.errors import LabError
from labctl.fsutil import wait_for_flock
from labctl.lab.state import LabState

LAB_LOCK_WAIT = 5.0  # seconds a command waits for another one on the same lab before refusing


class BusyError(LabError):
    """Another labctl holds the lab's lock."""


@contextmanager
def lab_lock(
    state: LabState,
    command: str,
    *,
    wait: float | None = None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Iterator[None]:
    """Hold the lab's lock for the duration; wait up to ``wait`` seconds (default
    :data:`LAB_LOCK_WAIT`), then refuse."""
    state.ensure()
    path = state.root / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        wait_for_flock(fd, LAB_LOCK_WAIT if wait is None else wait, clock, sleep, lambda: _busy(state.name, fd))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _busy(lab: str, fd: int) -> BusyError:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        holder = {}
    pid, command = holder.get("pid", "?"), holder.get("command", "?")
    return BusyError(f"lab `{lab}` is busy (pid {pid}, command {command})",
                     "wait for it to finish, or stop that process")


@contextmanager
def host_lock(path: Path, timeout: float = 600.0) -> Iterator[None]:
    """A host-wide lock (e.g. around the shared base image import), waited for up to ``timeout``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        wait_for_flock(fd, timeout, time.monotonic, time.sleep,
                       lambda: BusyError(f"{path} is held by another labctl for over {int(timeout)}s"))
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
