"""What the CLI prints while an operation runs: steps and notes as lines on stderr, node phases as a
live table on a terminal (one line per change otherwise), and a failed node's console tail."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TextIO

from labctl.access.readiness import TAIL_LINES, Progress

# Tests only: "N:FIFO" makes the process wait, right after printing its N-th step line, until the
# test has opened FIFO for writing and closed it again. The test sends its signal while holding
# the FIFO open, so an interruption lands at that exact step boundary whatever the machine's load.
PAUSE_AFTER_STEP = "LABCTL_TEST_PAUSE_AFTER_STEP"


class TerminalEvents:
    """:class:`labctl.ops.events.Events` printed on ``stream`` (stderr): nothing but errors when quiet."""

    def __init__(self, stream: TextIO, tty: bool, quiet: bool = False) -> None:
        self.stream, self.tty, self.quiet = stream, tty, quiet
        self._drawn = 0
        self._steps = 0

    def step(self, what: str, did: str) -> None:
        self._line(f"{what}: {did}")
        self._steps += 1
        _pause_for_tests(self._steps)

    def note(self, text: str) -> None:
        self._line(text)

    def phases(self, progress: Progress, changed: Sequence[str], now: float) -> None:
        if self.quiet:
            return
        if not self.tty:
            for name in changed:
                node = progress.nodes[name]
                detail = f" {node.step}" if node.step else ""
                self.stream.write(f"{name}: {node.phase}{detail}\n")
        else:
            if self._drawn:
                self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            lines = [f"{'NODE':<10} {'ROLE':<8} {'PHASE':<22} TIME"]
            for node in progress.nodes.values():
                phase = f"{node.phase} {node.step}" if node.step else node.phase
                lines.append(f"{node.name:<10} {node.role:<8} {phase:<22} {int(now - node.since)}s")
            self.stream.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        self.stream.flush()

    def failure(self, node: str, tail: Sequence[str]) -> None:
        self.stream.write(f"--- last {TAIL_LINES} lines of {node}'s console ---\n")
        self.stream.write("\n".join(tail) + "\n---\n")
        self.stream.flush()

    def _line(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()


def _pause_for_tests(steps: int) -> None:
    spec = os.environ.get(PAUSE_AFTER_STEP)
    if not spec:
        return
    count, _, fifo = spec.partition(":")
    if count.isdigit() and int(count) == steps and fifo:
        with open(fifo, "rb") as held:  # returns once the test opened the other end
            held.read()  # returns once the test closed it; a signal ends the process here
