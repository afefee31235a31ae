"""Waiting for the lab: bootstrap phases read from each node's serial console log.

Every bootstrap step prints ``labctl-phase: <node> <phase>`` to the serial console, and a failed
one ``labctl-phase: <node> failed <step>``; the final phase is ``ready``. Reading the console log
needs no network and has no polling delay beyond the file's. Where the log cannot be read here
(a remote hypervisor, a root-only file), the node's recorded phase is read over ssh instead.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from labctl.errors import ProvisionError
from labctl.lab.plan import NodePlan

PHASE_LINE = re.compile(r"labctl-phase: (?P<node>[a-z0-9-]+) (?P<phase>[a-z0-9_.-]+)(?: (?P<step>[a-z0-9_.-]+))?")
ERROR_LINE = re.compile(r"labctl-error: (?P<node>[a-z0-9-]+) (?P<step>[a-z0-9_.-]+): (?P<message>.*?)\s*$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
READY = "ready"
FAILED = "failed"
TAIL_LINES = 30
SSH_EVERY = 10.0  # seconds between two ssh reads of one node's phase

# Run by the lab user's shell on a node: the phase recorded during this boot (/run is emptied at
# every boot, so an earlier boot's `ready` never counts) on the first line; after a failure, the tail
# of the bootstrap's output (its unit's journal of this boot). Always exits 0 once the phase is read.
# Static: nothing is interpolated.
REMOTE_PHASE = ('p=$(cat /run/labctl/phase 2>/dev/null) || exit 0; printf "%s\\n" "$p"; '
                'case $p in failed*) sudo -n journalctl -b -u labctl-bootstrap.service -n 30 --no-pager -o cat '
                '2>&1;; esac; exit 0')


@dataclass(frozen=True)
class PhaseEvent:
    node: str
    phase: str
    step: str | None = None  # the failed step, for phase "failed"


def parse_phases(text: str, node: str) -> list[PhaseEvent]:
    """The phase events of ``node`` in console text, in order (other nodes' lines are ignored)."""
    events = []
    for line in ANSI.sub("", text).splitlines():
        match = PHASE_LINE.search(line)
        if match and match["node"] == node:
            step = match["step"] if match["phase"] == FAILED else None
            events.append(PhaseEvent(node, match["phase"], step))
    return events


def last_error(node: str, text: str) -> str | None:
    """``STEP: MESSAGE`` of the node's last failure when its last phase in ``text`` is a failure."""
    events = parse_phases(text, node)
    if not events or events[-1].phase != FAILED:
        return None
    found = None
    for line in ANSI.sub("", text).splitlines():
        match = ERROR_LINE.search(line)
        if match and match["node"] == node:
            found = f"{match['step']}: {match['message']}"
    return found or f"{events[-1].step or 'unknown'}: (no message)"


def console_tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of console output, control sequences removed."""
    clean = [line.rstrip() for line in ANSI.sub("", text).replace("\r", "").splitlines()]
    return [line for line in clean if line.strip()][-lines:]


@dataclass
class NodeProgress:
    name: str
    role: str
    phase: str = "booting"
    since: float = 0.0
    step: str | None = None
    error: str | None = None  # the node's own line after a failure: "STEP: MESSAGE"

    @property
    def done(self) -> bool:
        return self.phase in (READY, FAILED)


@dataclass
class Progress:
    """The phase of every node, updated from console text."""

    nodes: dict[str, NodeProgress] = field(default_factory=dict)

    def update(self, name: str, text: str, now: float) -> bool:
        """Take the latest phase of ``name`` from ``text``; True when it changed."""
        events = parse_phases(text, name)
        if not events:
            return False
        last, entry = events[-1], self.nodes[name]
        if (last.phase, last.step) == (entry.phase, entry.step):
            return False
        entry.phase, entry.step, entry.since = last.phase, last.step, now
        return True

    @property
    def failed(self) -> list[NodeProgress]:
        return [n for n in self.nodes.values() if n.phase == FAILED]

    @property
    def all_ready(self) -> bool:
        return all(n.phase == READY for n in self.nodes.values())


ReadText = Callable[[str], str]  # node name -> console text since this `up` started it


class PhaseEvents(Protocol):
    """Where :func:`wait_ready` reports: every change of phase, and a failed node's console tail."""

    def phases(self, progress: Progress, changed: Sequence[str], now: float) -> None: ...

    def failure(self, node: str, tail: Sequence[str]) -> None: ...


def wait_ready(
    nodes: Sequence[NodePlan],
    read: ReadText,
    events: PhaseEvents,
    *,
    timeout: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    interval: float = 2.0,
) -> Progress:
    """Poll the nodes' consoles until all are ready; raise ProvisionError on a failure or timeout."""
    start = clock()
    progress = Progress({n.name: NodeProgress(n.name, n.role, since=start) for n in nodes})
    events.phases(progress, list(progress.nodes), start)
    while True:
        now = clock()
        changed = [name for name, node in progress.nodes.items() if not node.done and
                   progress.update(name, read(name), now)]
        if changed:
            events.phases(progress, changed, now)
        if progress.failed:
            failed = progress.failed[0]
            text = read(failed.name)
            failed.error = last_error(failed.name, text)
            events.failure(failed.name, console_tail(text))
            raise _failure(failed)
        if progress.all_ready:
            return progress
        if now - start >= timeout:
            raise _timeout(progress, timeout)
        sleep(interval)


def _failure(node: NodeProgress) -> ProvisionError:
    said = node.error.partition(": ")[2] if node.error else ""
    return ProvisionError(
        f"node {node.name} failed at step {node.step or 'unknown'}" + (f": {said}" if said else ""),
        f"the rest of the lab is left running: look with `labctl logs {node.name}` or "
        f"`labctl ssh {node.name}`; once the cause is fixed, `labctl up --retry-failed`",
    )


def _timeout(progress: Progress, timeout: float) -> ProvisionError:
    waiting = [f"{n.name} ({n.phase})" for n in progress.nodes.values() if n.phase != READY]
    return ProvisionError(
        f"not ready after {int(timeout)}s: {', '.join(waiting)}",
        "a cold cluster under TCG is slow; rerun `labctl up --timeout N` to wait longer, "
        "or look with `labctl logs NODE`",
    )


def log_reader(paths: Mapping[str, object], offsets: Mapping[str, int], fallback: ReadText | None = None) -> ReadText:
    """Read each node's console log from ``offsets[node]`` on (what this boot printed).

    A node without a log path here (remote hypervisor) or whose log is not readable is asked
    ``fallback`` instead; a log not written yet reads as nothing."""

    def read(name: str) -> str:
        path = paths.get(name)
        if path is None:
            return fallback(name) if fallback else ""
        try:
            with open(str(path), "rb") as handle:
                handle.seek(offsets.get(name, 0))
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        except PermissionError:
            return fallback(name) if fallback else ""

    return read


Submit = Callable[[Callable[[str], str | None], str], "Future[str | None]"]  # an executor's submit


def ssh_phase_reader(run: Callable[[str], str | None], clock: Callable[[], float], submit: Submit,
                     every: float = SSH_EVERY) -> ReadText:
    """Each node's recorded phase (and, after a failure, its cloud-init tail) as console-like text.

    ``run(node)`` runs :data:`REMOTE_PHASE` on the node over ssh and returns its output, or None
    while the node cannot be reached. It runs through ``submit`` (a thread pool's), so a slow or
    unreachable node never holds up the waiting loop: a read returns what the node last said and
    asks again, at most once every ``every`` seconds and never twice at once. An error ``run``
    raises (ssh missing) is raised by the next read."""
    said: dict[str, str] = {}
    asked: dict[str, tuple[float, Future[str | None]]] = {}

    def take(name: str, done: "Future[str | None]") -> str:
        said[name] = _as_console(name, done.result() or "")
        return said[name]

    def read(name: str) -> str:
        now = clock()
        if name in asked:
            at, pending = asked[name]
            if not pending.done():
                return said.get(name, "")
            take(name, pending)
            if now - at < every:
                return said[name]
        asked[name] = (now, submit(run, name))
        return take(name, asked[name][1]) if asked[name][1].done() else said.get(name, "")

    return read


def _as_console(name: str, out: str) -> str:
    phase, _, tail = out.partition("\n")
    return f"{tail.rstrip()}\nlabctl-phase: {name} {phase.strip()}\n" if phase.strip() else ""
