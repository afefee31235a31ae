"""Waiting for nodes to be ready: their console logs where this host can read them, their phase over
ssh where it cannot (a remote hypervisor, a root-only log), read in a small thread pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from labctl.access import ssh
from labctl.access.readiness import REMOTE_PHASE, PhaseEvents, log_reader, ssh_phase_reader, wait_ready
from labctl.backends.base import Backend
from labctl.lab.plan import NodePlan, Plan
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets

SSH_READ_TIMEOUT = 30  # seconds for one ssh read of a node's phase
MAX_READERS = 8


def route_to(plan: Plan, backend: Backend, state: LabState) -> ssh.Route:
    """How this host reaches the lab's nodes over ssh, with the lab's ssh files written."""
    reach = type(backend).reach(backend.target)
    return ssh.open_route(plan, state, ensure_secrets(state, plan), local=reach.local, jump=reach.jump)


def await_ready(plan: Plan, backend: Backend, state: LabState, nodes: Sequence[NodePlan],
                offsets: Mapping[str, int], events: PhaseEvents, *, timeout: float,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until every one of ``nodes`` is ready, reading each console log from ``offsets[node]`` on."""
    paths = {node.name: backend.console_log(node) for node in nodes}
    pool = ThreadPoolExecutor(max_workers=min(MAX_READERS, len(nodes) or 1), thread_name_prefix="labctl-phase")
    try:
        fallback = ssh_phase_reader(_phase_over_ssh(lambda: route_to(plan, backend, state)), clock, pool.submit)
        wait_ready(nodes, log_reader(paths, offsets, fallback), events, timeout=timeout, clock=clock, sleep=sleep)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a read in flight ends by its own timeout


def _phase_over_ssh(open_route: Callable[[], ssh.Route]) -> Callable[[str], str | None]:
    """Runs the phase query on a node over ssh; the route (and the lab's ssh files) is made at first use."""
    route: list[ssh.Route] = []
    once = threading.Lock()

    def run(name: str) -> str | None:
        with once:  # reads run in a thread pool; the ssh files are written by the first
            if not route:
                route.append(open_route())
        return ssh.run_output(route[0].argv(name, (REMOTE_PHASE,)), timeout=SSH_READ_TIMEOUT)

    return run
