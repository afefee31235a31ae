"""Progress output for long transfers: a bar on a terminal, plain lines in logs, or nothing.

Progress goes to stderr (data goes to stdout); the clock is injected so tests can drive it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class NullProgress:
    """Reports nothing (``--quiet``); the interface the others implement."""

    def start(self, label: str, total: int | None, done: int = 0) -> None:
        """A transfer of ``total`` bytes (None if unknown) begins, ``done`` already there."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more arrived."""

    def finish(self) -> None:
        """The transfer completed."""

    def stop(self) -> None:
        """The transfer broke off; end the display without a summary."""

    def note(self, text: str) -> None:
        """Something worth a line: a retry, a restart."""


class LineProgress(NullProgress):
    """Plain lines for logs: the start, each quarter, the end, and notes."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.label, self.done, self.first, self.t0 = "", 0, 0, 0.0
        self.total: int | None = None
        self._quarter = 0

    def start(self, label: str, total: int | None, done: int = 0) -> None:
        self.label, self.total, self.done, self.first, self.t0 = label, total, done, done, self.clock()
        self._quarter = self._quarters()
        resumed = f", resuming at {format_size(done)}" if done else ""
        self._line(f"downloading {label} ({format_size(total) if total else 'size unknown'}{resumed})")

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self._quarters() > self._quarter and self._quarters() < 4:
            self._quarter = self._quarters()
            self._line(f"{self.label}: {self._quarter * 25}% of {format_size(self.total or 0)}")

    def finish(self) -> None:
        elapsed = self.clock() - self.t0
        speed = format_size(self.speed())
        self._line(f"{self.label}: {format_size(self.done)} done in {elapsed:.0f}s ({speed}/s)")

    def note(self, text: str) -> None:
        self._line(f"{self.label}: {text}" if self.label else text)

    def speed(self) -> float:
        elapsed = self.clock() - self.t0
        return (self.done - self.first) / elapsed if elapsed > 0 else 0.0

    def _quarters(self) -> int:
        return self.done * 4 // self.total if self.total else 0

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class BarProgress(LineProgress):
    """One line redrawn in place on a terminal: bar, bytes, speed and ETA."""

    interval = 0.1
    width = 24
    _drawn = float("-inf")

    def start(self, label: str, total: int | None, done: int = 0) -> None:
        self.label, self.total, self.done, self.first, self.t0 = label, total, done, done, self.clock()
        self._drawn = float("-inf")
        self._draw()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.clock() - self._drawn >= self.interval:
            self._draw()

    def finish(self) -> None:
        self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def stop(self) -> None:
        self.stream.write("\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(f"\r\x1b[K{self.label}: {text}\n" if self.label else f"{text}\n")
        self.stream.flush()

    def _draw(self) -> None:
        self._drawn = self.clock()
        speed = self.speed()
        if self.total:
            filled = self.width * self.done // self.total
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done * 100 // self.total:3d}%"
            size = f"{format_size(self.done)} / {format_size(self.total)}"
            left = (self.total - self.done) / speed if speed else None
            eta = f"ETA {int(left) // 60}:{int(left) % 60:02d}" if left is not None else "ETA --:--"
        else:
            bar, size, eta = "", format_size(self.done), ""
        self.stream.write(f"\r\x1b[K{self.label} {bar} {size} {format_size(speed)}/s {eta}".rstrip())
        self.stream.flush()


def make_progress(
    stream: TextIO | None = None,
    *,
    quiet: bool = False,
    isatty: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> NullProgress:
    """A bar on a terminal, plain lines otherwise, nothing when ``quiet``."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return NullProgress()
    tty = stream.isatty() if isatty is None else isatty
    return (BarProgress if tty else LineProgress)(stream, clock)
