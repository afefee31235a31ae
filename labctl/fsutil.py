"""Small file-system primitives every layer uses: atomic writes and waiting for an flock."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

PRIVATE_MODE = 0o600


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_MODE) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never part of one.

    The temporary file has a unique name (concurrent writers never share one) and ``mode`` from its
    first byte on, so a secret is never readable by others, not even for a moment."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def wait_for_flock(fd: int, wait: float, clock: Callable[[], float], sleep: Callable[[float], None],
                   busy: Callable[[], Exception]) -> None:
    """Take an exclusive flock on ``fd``, trying for ``wait`` seconds; then raise ``busy()``."""
    deadline = clock() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if clock() >= deadline:
                raise busy() from None
            sleep(0.2)
