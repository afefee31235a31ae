"""How the operations of :mod:`labctl.ops` report progress: a small interface the caller implements
(the CLI prints; a Python user may collect or ignore)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from labctl.access.readiness import PhaseEvents, Progress


class Events(PhaseEvents, Protocol):
    """Progress of `up`, `start`, `stop` and `destroy`."""

    def step(self, what: str, did: str) -> None:
        """One step is done: ``what`` (e.g. "node master1") and what was done ("created", "exists", …)."""

    def note(self, text: str) -> None:
        """A line worth telling the user (the accelerator chosen, a seed removed, …)."""


class QuietEvents:
    """Events that go nowhere: for library use where progress does not matter."""

    def step(self, what: str, did: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def phases(self, progress: Progress, changed: Sequence[str], now: float) -> None:
        pass

    def failure(self, node: str, tail: Sequence[str]) -> None:
        pass
