"""`labctl up --retry-failed`: run the failed nodes' bootstrap again, once the user fixed the cause.

Every node is asked over ssh (in parallel) to run ``/usr/local/lib/labctl/retry``: a node whose
bootstrap failed clears its failure and restarts its bootstrap unit (which resumes at the failed step);
any other node says it has not failed and is left alone. A node still booting is asked again until it
answers, for at most the budget's boot time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labctl.access import ssh
from labctl.backends.base import Backend
from labctl.errors import ProvisionError
from labctl.guest.cloudconfig import RETRY
from labctl.lab.plan import NodePlan, Plan
from labctl.lab.state import LabState
from labctl.ops.events import Events
from labctl.ops.ready import route_to

ASK_TIMEOUT = 60  # seconds for one ssh call of the retry script
ASK_EVERY = 10  # seconds between two tries on a node that does not answer yet
RETRYING = "retrying from "


def retry_failed(plan: Plan, backend: Backend, state: LabState, nodes: Sequence[NodePlan], events: Events,
                 offsets: dict[str, int], *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Retry the failed ones of ``nodes``; their console offsets move past what they printed before.
    Returns the names of the nodes retried."""
    route = route_to(plan, backend, state)
    deadline = clock() + plan.budget.budget.boot

    def ask(node: NodePlan) -> str | None:
        while True:
            said = ssh.run_output(route.argv(node.name, ("sudo", "-n", RETRY)), timeout=ASK_TIMEOUT)
            if said is not None or clock() >= deadline:
                return said
            sleep(ASK_EVERY)

    with ThreadPoolExecutor(max_workers=min(8, len(nodes) or 1), thread_name_prefix="labctl-retry") as pool:
        answers = dict(zip([n.name for n in nodes], pool.map(ask, nodes), strict=True))
    silent = sorted(name for name, said in answers.items() if said is None)
    if silent:
        raise ProvisionError(f"cannot ask {', '.join(silent)} over ssh whether they failed",
                             "is the node running? `labctl status`, `labctl console NODE`")
    retried = {name: line for name, said in answers.items() for line in (said or "").splitlines() if RETRYING in line}
    for node in nodes:
        if node.name in retried:
            offsets[node.name] = _size(backend.console_log(node))
            events.note(retried[node.name].removeprefix("labctl: "))  # "worker1: retrying from packages"
    return list(retried)


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0

