"""A running lab that grows: nodes added to lab.yaml join on the next `up`.

The new nodes' seeds carry everything they need but what the running lab must learn about them:
the gateway's DNS gets their names, the load balancers get added masters as backends, and, when the
bootstrap token that `kubeadm init` registered has expired (kubeadm's tokens live a day), master1
registers a fresh one that the new seeds carry. What is still to do is recorded in the lab's state
(``refresh`` in lab.json) before any node is made, so an interrupted `up` finishes it next time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from labctl.access import ssh
from labctl.guest.cloudconfig import REFRESH
from labctl.guest.kubeadm import BOOTSTRAP_TTL_SECONDS
from labctl.guest.roles import render_dnsmasq_conf, render_haproxy_cfg
from labctl.lab.plan import NodePlan, Plan
from labctl.lab.state import LabState
from labctl.pki.secrets import LabSecrets, bootstrap_token_age, ensure_secrets, renew_bootstrap_token

TOKEN = "token"  # noqa: S105 - the name of a refresh step, not a secret
DNS = "dns"
BACKENDS = "haproxy"
ORDER = (TOKEN, DNS, BACKENDS)
# A token younger than this is still registered long enough for added nodes to join with it.
TOKEN_REUSE_SECONDS = BOOTSTRAP_TTL_SECONDS - 2 * 3600
REFRESH_TIMEOUT = 120  # seconds for one refresh over ssh


@dataclass(frozen=True)
class Growth:
    added: tuple[NodePlan, ...]  # planned nodes the built lab does not have
    refresh: tuple[str, ...]  # what the running lab must learn, in ORDER


def plan_growth(plan: Plan, built: dict[str, Any] | None) -> Growth:
    """What adding ``plan``'s new nodes to the lab ``built`` (its recorded fingerprint) asks of it."""
    if not built:
        return Growth((), ())
    added = tuple(node for node in plan.nodes if node.name not in built.get("nodes", {}))
    needs = set()
    if added:
        needs.add(DNS)
    if any(node.role in ("master", "worker") for node in added):
        needs.add(TOKEN)
    if any(node.role == "master" for node in added):
        needs.add(BACKENDS)
    return Growth(added, tuple(what for what in ORDER if what in needs))


def prepare(plan: Plan, state: LabState, growth: Growth, clock: Callable[[], float] = time.time) -> tuple[str, ...]:
    """Before the new nodes' seeds are made: a fresh token if the old one may have expired; what must be
    refreshed once the lab is up (also what an interrupted `up` left), recorded in the lab's state."""
    pending = [what for what in ORDER if what in growth.refresh or what in state.record().get("refresh", [])]
    if TOKEN in pending and TOKEN not in state.record().get("refresh", []):
        age = bootstrap_token_age(state, clock())
        if age is not None and age < TOKEN_REUSE_SECONDS:
            pending.remove(TOKEN)  # the token `kubeadm init` registered is still good
        else:
            renew_bootstrap_token(state)
    state.save_record({**state.record(), "refresh": pending})
    return tuple(pending)


def refresh(plan: Plan, state: LabState, route: ssh.Route, pending: Sequence[str],
            note: Callable[[str], None]) -> None:
    """Tell the running lab about its new nodes (over ssh, as the lab user with sudo); each step is
    idempotent and is struck off the record once done."""
    secrets = ensure_secrets(state, plan)
    for what in pending:
        for node, data in _pushes(plan, secrets, what):
            argv = route.argv(node.name, ("sudo", "-n", REFRESH, what))
            ssh.run_checked(argv, f"refreshing {what} on {node.name}", REFRESH_TIMEOUT, data)
            note(f"{node.name}: {_DONE[what]}")
        left = [item for item in state.record().get("refresh", []) if item != what]
        state.save_record({**state.record(), "refresh": left})


_DONE = {TOKEN: "bootstrap token registered for the new nodes", DNS: "lab DNS knows the new nodes",
         BACKENDS: "HAProxy sends the API to every master"}


def _pushes(plan: Plan, secrets: LabSecrets, what: str) -> list[tuple[NodePlan, str]]:
    """(node, what goes on the refresh script's stdin) for one refresh."""
    if what == TOKEN:
        return [(plan.node("master1"), secrets.bootstrap_token + "\n")]
    if what == DNS:
        return [(plan.node("gateway"), render_dnsmasq_conf(plan))]
    return [(node, render_haproxy_cfg(plan, node, secrets)) for node in plan.nodes if node.role == "lb"]
