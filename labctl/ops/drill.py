"""``labctl drill NAME``: scripted failures a learner runs against a live lab, each saying what it did, what
it expected, what it observed, whether the lab held, and putting the lab back.

* ``lb``: power off the load balancer that holds the API address (as a crash would); keepalived moves the
  VIP to the other one and the API answers through ``api.<domain>`` again; then the node comes back.
* ``master``: power off the last master; HAProxy marks it DOWN and the API keeps answering through the
  load balancer; then the node comes back and HAProxy marks it UP.
* ``etcd-member`` (external etcd): stop etcd on the leader (a new one is elected, writes go on), then on
  members until a majority is down (writes are refused: no quorum), then start them all (healthy, writable,
  nothing lost).

While ``lb`` and ``master`` run, a master asks ``https://api.<domain>:6443/readyz`` twice a second and every
failed probe is counted. Plain functions over a :class:`DrillLab` (how to reach the lab), tested without one.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from labctl.access import ssh
from labctl.access.ssh import Ran
from labctl.backends.base import Backend
from labctl.errors import ConfigError, LabError
from labctl.guest.etcd import etcd_members, is_external, quorum
from labctl.guest.roles import KUBE_PKI, LAN, STATS_PORT, STATS_USER
from labctl.lab.lock import lab_lock
from labctl.lab.plan import API_PORT, NodePlan, Plan
from labctl.lab.state import LabState
from labctl.lab.validate import suggestion
from labctl.ops.etcd import SSH_TIMEOUT, Etcdctl, Remote, etcd_status, sh, start_members, wait_healthy
from labctl.ops.events import Events
from labctl.ops.lifecycle import start

DRILLS = ("lb", "master", "etcd-member")
PROBE_INTERVAL = 0.5  # seconds between two /readyz probes
PROBE_LIMIT = 1800  # probes at most (15 min): the probe loop ends by itself
STEADY = 5  # consecutive answers that count as "answering again"
MOVE_BOUND = 60.0  # seconds the VIP, HAProxy and the API get to route around a failure
BACK_BOUND = 120.0  # seconds they get once the node is back
ELECTION_BOUND = 60.0
DRILL_KEY = "/labctl/drill/"


class Lines(Protocol):
    """Output lines of a command still running on a node, with this host's (monotonic) arrival time."""

    def since(self, moment: float) -> list[tuple[float, str]]: ...

    def stop(self) -> None: ...


@dataclass
class DrillLab:
    """What a drill needs of the lab; the CLI builds it from the route, the backend and the lab's secrets."""

    plan: Plan
    remote: Remote
    stream: Callable[[str, Sequence[str]], Lines]  # a command on a node whose lines arrive as it runs
    power_off: Callable[[NodePlan], str]  # forced off, as a crash would; what the backend did
    power_on: Callable[[NodePlan], None]  # started, and waited for until ready
    stats_password: str
    note: Callable[[str], None] = lambda _: None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass
class Step:
    name: str
    did: str
    expected: str
    observed: dict[str, Any]
    ok: bool


@dataclass
class DrillResult:
    drill: str
    summary: str
    steps: list[Step] = field(default_factory=list)
    restored: bool = False
    restore_hint: str | None = None  # what to run when the drill could not put the lab back
    seconds: float = 0.0

    @property
    def held(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"drill": self.drill, "summary": self.summary, "held": self.held, "restored": self.restored,
                "restore_hint": self.restore_hint, "seconds": self.seconds,
                "steps": [asdict(step) for step in self.steps]}


def run_drill(name: str, lab: DrillLab) -> DrillResult:
    """Run drill ``name``; an unknown name is a one-line error listing the drills."""
    drills = {"lb": drill_lb, "master": drill_master, "etcd-member": drill_etcd_member}
    if name not in drills:
        raise ConfigError("", f"unknown drill {name!r}; drills: {', '.join(DRILLS)}", suggestion(name, DRILLS))
    began = lab.clock()
    result = drills[name](lab)
    result.seconds = round(lab.clock() - began, 1)
    return result


# --- the API probe ----------------------------------------------------------------------------------


class ApiProbe:
    """``/readyz`` through ``api.<domain>`` from a master, twice a second, for the whole drill."""

    def __init__(self, lab: DrillLab, node: str) -> None:
        self.lab = lab
        url = f"https://{lab.plan.api_name}:{API_PORT}/readyz"
        # As the lab user: the cluster CA certificate is public.
        self.lines = lab.stream(node, sh("api-probe.sh", url, f"{KUBE_PKI}/ca.crt", str(PROBE_LIMIT),
                                         str(PROBE_INTERVAL), root=False))

    def answers(self, since: float, until: float | None = None) -> list[tuple[float, bool]]:
        return [(at, line.split()[-1:] == ["200"]) for at, line in self.lines.since(since)
                if until is None or at <= until]

    def steady_after(self, since: float, bound: float) -> float | None:
        """Seconds from ``since`` to the first of :data:`STEADY` answers in a row, or None within ``bound``."""
        deadline = since + bound
        while self.lab.clock() < deadline:
            run, start = 0, None
            for at, ok in self.answers(since):
                run, start = (run + 1, start if run else at) if ok else (0, None)
                if run >= STEADY and start is not None:
                    return round(start - since, 1)
            self.lab.sleep(1.0)
        return None

    def failures(self, since: float, until: float | None = None) -> tuple[int, int]:
        """(failed, all) probes from ``since`` to ``until``."""
        seen = self.answers(since, until)
        return sum(not ok for _, ok in seen), len(seen)


@contextmanager
def probing(lab: DrillLab, node: str) -> Iterator[ApiProbe]:
    probe = ApiProbe(lab, node)
    try:
        if probe.steady_after(lab.clock(), MOVE_BOUND) is None:
            raise LabError(f"the API does not answer through {lab.plan.api_name} before the drill",
                           "a drill needs a working lab: `labctl status`, `labctl up`")
        yield probe
    finally:
        probe.lines.stop()


def wait_until(lab: DrillLab, check: Callable[[], bool], bound: float) -> float | None:
    """Seconds until ``check()`` holds (polled every 2 s), or None after ``bound``."""
    began = lab.clock()
    while True:
        if check():
            return round(lab.clock() - began, 1)
        if lab.clock() - began >= bound:
            return None
        lab.sleep(2.0)


@contextmanager
def restoring(lab: DrillLab, result: DrillResult, node: NodePlan) -> Iterator[list[bool]]:
    """Powers ``node`` back on if the drill ends early (``down[0]`` still set)."""
    down = [False]
    try:
        yield down
    finally:
        if down[0]:
            bring_back(lab, result, node, down)


def bring_back(lab: DrillLab, result: DrillResult, node: NodePlan, down: list[bool]) -> None:
    """Start ``node`` and wait until it is ready, once; if that fails, the error says what to run."""
    down[0] = False
    try:
        lab.power_on(node)
    except LabError as err:
        # The error is what the user sees (the result is not printed): it says what to run.
        raise LabError(f"drill {result.drill}: {node.name} could not be powered back on: {err.message}",
                       f"run `labctl start {node.name}`") from err


# --- lb ------------------------------------------------------------------------------------------


def holds_vip(lab: DrillLab, node: str) -> bool:
    ran = lab.remote(node, ["ip", "-o", "-4", "addr", "show", "dev", LAN], timeout=20)
    return ran.code == 0 and f" {lab.plan.api_address}/" in ran.text


def drill_lb(lab: DrillLab) -> DrillResult:
    plan = lab.plan
    lbs = plan.nodes_of("lb")
    if len(lbs) < 2:
        raise LabError("drill lb needs two load balancers: with one, the API goes down with it",
                       "set nodes.lb.count: 2 (keepalived then holds the API address) and run `labctl up`")
    holder = next((lb for lb in lbs if holds_vip(lab, lb.name)), None)
    if holder is None:
        raise LabError(f"no load balancer holds the API address {plan.api_address}", "is keepalived running? "
                       "`labctl ssh lb1 -- systemctl status keepalived`")
    other = next(lb for lb in lbs if lb.name != holder.name)
    result = DrillResult("lb", f"power off {holder.name}, which holds {plan.api_name} ({plan.api_address}); "
                               f"keepalived on {other.name} should take the address over")
    with probing(lab, plan.nodes_of("master")[0].name) as probe, restoring(lab, result, holder) as down:
        stopped_at = lab.clock()
        did = lab.power_off(holder)
        down[0] = True
        moved = wait_until(lab, lambda: holds_vip(lab, other.name), MOVE_BOUND)
        steady = probe.steady_after(stopped_at, MOVE_BOUND)
        failed, probes = probe.failures(stopped_at, stopped_at + (steady or MOVE_BOUND))
        result.steps.append(Step(
            f"stop {holder.name}", f"{holder.name}: {did} (as a crash would)",
            f"{other.name} holds {plan.api_address} and the API answers again within {MOVE_BOUND:.0f}s",
            {"vip_on": other.name if moved is not None else None, "vip_moved_after_s": moved,
             "api_steady_after_s": steady, "failed_probes": failed, "probes": probes},
            moved is not None and steady is not None))
        result.steps.append(_lb_back(lab, result, probe, holder, down))
    result.restored = True
    return result


def _lb_back(lab: DrillLab, result: DrillResult, probe: ApiProbe, holder: NodePlan, down: list[bool]) -> Step:
    back_at = lab.clock()
    bring_back(lab, result, holder, down)
    returned = wait_until(lab, lambda: holds_vip(lab, holder.name), BACK_BOUND)
    steady = probe.steady_after(back_at, BACK_BOUND)
    failed, probes = probe.failures(back_at)
    return Step(f"start {holder.name}", f"{holder.name}: started and ready again",
                f"the API keeps answering; {holder.name}, the preferred one, takes the address back",
                {"vip_on": holder.name if returned is not None else None, "vip_back_after_s": returned,
                 "api_steady_after_s": steady, "failed_probes": failed, "probes": probes},
                steady is not None)


# --- master ----------------------------------------------------------------------------------------


def haproxy_states(lab: DrillLab, lb: NodePlan) -> dict[str, str]:
    """Each master's status in ``lb``'s kube-apiserver backend (HAProxy's stats CSV; the password on stdin)."""
    url = f"http://{lb.internal.address.ip}:{STATS_PORT}/;csv"
    ran = lab.remote(lb.name, ["curl", "--silent", "--max-time", "10", "--config", "-", url],
                     stdin=f'user = "{STATS_USER}:{lab.stats_password}"\n'.encode(), timeout=30)
    if ran.code != 0:
        return {}
    rows = csv.DictReader(io.StringIO(ran.text.lstrip("# ")))
    return {row["svname"]: row["status"] for row in rows
            if row.get("pxname") == "kube-apiserver" and row.get("svname", "").startswith("master")}


def drill_master(lab: DrillLab) -> DrillResult:
    plan = lab.plan
    masters = plan.nodes_of("master")
    if len(masters) < 2:
        raise LabError("drill master needs two or more masters: with one, the API goes down with it",
                       "set nodes.master.count: 3 and build the lab again")
    victim, lb = masters[-1], plan.nodes_of("lb")[0]
    result = DrillResult("master", f"power off {victim.name}; HAProxy on the load balancer(s) should mark it DOWN "
                                   f"and send the API to the other masters")
    with probing(lab, masters[0].name) as probe, restoring(lab, result, victim) as down:
        stopped_at = lab.clock()
        did = lab.power_off(victim)
        down[0] = True
        marked = wait_until(lab, lambda: haproxy_states(lab, lb).get(victim.name, "").startswith("DOWN"), MOVE_BOUND)
        routed_around = stopped_at + (marked or 0.0)  # answers count from there: before, luck may pass them
        steady = probe.steady_after(routed_around, MOVE_BOUND)
        if steady is not None:
            steady = round(routed_around - stopped_at + steady, 1)
        failed, probes = probe.failures(stopped_at, stopped_at + (steady or MOVE_BOUND))
        result.steps.append(Step(
            f"stop {victim.name}", f"{victim.name}: {did} (as a crash would)",
            f"HAProxy on {lb.name} marks {victim.name} DOWN and the API answers through {plan.api_name}",
            {"haproxy": haproxy_states(lab, lb), "marked_down_after_s": marked, "api_steady_after_s": steady,
             "failed_probes": failed, "probes": probes},
            marked is not None and steady is not None))
        back_at = lab.clock()
        bring_back(lab, result, victim, down)
        up_again = wait_until(lab, lambda: haproxy_states(lab, lb).get(victim.name, "").startswith("UP"), BACK_BOUND)
        failed, probes = probe.failures(back_at)
        result.steps.append(Step(
            f"start {victim.name}", f"{victim.name}: started and ready again",
            f"HAProxy marks {victim.name} UP again", {"haproxy": haproxy_states(lab, lb), "marked_up_after_s": up_again,
                                                       "failed_probes": failed, "probes": probes},
            up_again is not None))
    result.restored = True
    return result


# --- etcd-member -------------------------------------------------------------------------------------


def drill_etcd_member(lab: DrillLab) -> DrillResult:
    plan = lab.plan
    if not is_external(plan):
        raise LabError("drill etcd-member needs kubernetes.etcd: external",
                       "in a stacked lab each master is an etcd member: `labctl drill master` stops one")
    etcdctl = Etcdctl(plan, lab.remote)
    members = list(etcd_members(plan))
    before = etcd_status(etcdctl)
    if before.healthy < len(members) or before.leader is None:
        raise LabError(f"etcd is not healthy before the drill ({before.healthy} of {len(members)})",
                       "see `labctl etcd status`")
    result = DrillResult("etcd-member", f"stop etcd members one by one ({len(members)} members, a quorum is "
                                        f"{quorum(len(members))}), then start them again")
    stamp = str(int(time.time()))
    key = f"{DRILL_KEY}{stamp}"
    _put(etcdctl, members, f"{key}/before")
    stopped: list[str] = []
    try:
        result.steps.append(_one_down(lab, etcdctl, members, before.leader, stopped, key))
        result.steps.append(_majority_down(lab, etcdctl, members, stopped, key))
    finally:
        result.steps.append(_members_back(lab, etcdctl, members, stopped, key))
    result.restored = result.steps[-1].ok
    if not result.restored:
        result.restore_hint = "`labctl ssh etcdN -- sudo systemctl start etcd` on every stopped member, then " \
                              "`labctl etcd status`"
    return result


def _put(etcdctl: Etcdctl, targets: Sequence[Any], key: str) -> Ran:
    return etcdctl.etcdctl("put", key, "labctl drill", targets=targets, command_timeout=10)


def _stop(lab: DrillLab, node: str, stopped: list[str]) -> None:
    ran = lab.remote(node, ["sudo", "-n", "systemctl", "stop", "etcd.service"])
    if ran.code != 0:
        raise LabError(f"{node}: stopping etcd failed: {ran.last_line()}")
    stopped.append(node)


def _one_down(lab: DrillLab, etcdctl: Etcdctl, members: list[Any], leader: str, stopped: list[str],
              key: str) -> Step:
    _stop(lab, leader, stopped)
    alive = [m for m in members if m.node not in stopped]
    new_leader: list[str | None] = [None]

    def elected() -> bool:
        new_leader[0] = etcd_status(etcdctl).leader
        return new_leader[0] not in (None, leader)

    after = wait_until(lab, elected, ELECTION_BOUND)
    wrote = _put(etcdctl, alive, f"{key}/one-down")
    return Step("one member down", f"stopped etcd.service on {leader} (the leader)",
                f"the other {len(alive)} elect a leader and writes succeed ({len(alive)} of {len(members)} "
                "is a majority)",
                {"stopped": list(stopped), "leader": new_leader[0], "elected_after_s": after,
                 "write": "ok" if wrote.code == 0 else "refused"},
                after is not None and wrote.code == 0)


def _majority_down(lab: DrillLab, etcdctl: Etcdctl, members: list[Any], stopped: list[str], key: str) -> Step:
    while len(members) - len(stopped) >= quorum(len(members)):
        _stop(lab, next(m.node for m in reversed(members) if m.node not in stopped), stopped)
    alive = [m for m in members if m.node not in stopped]
    wrote = _put(etcdctl, alive, f"{key}/majority-down")
    status = etcd_status(etcdctl)
    return Step("majority down", f"stopped etcd.service on {', '.join(stopped)}",
                f"no quorum: {len(alive)} of {len(members)} cannot elect a leader, writes are refused",
                {"stopped": list(stopped), "healthy": status.healthy, "leader": status.leader,
                 "write": "ok" if wrote.code == 0 else "refused", "error": wrote.last_line() if wrote.code else None},
                wrote.code != 0)


def _members_back(lab: DrillLab, etcdctl: Etcdctl, members: list[Any], stopped: list[str], key: str) -> Step:
    started = [m for m in members if m.node in stopped]
    start_members(etcdctl, started)
    stopped.clear()
    try:
        status = wait_healthy(etcdctl, len(members), BACK_BOUND, lab.clock, lab.sleep)
    except LabError as err:
        return Step("members back", f"started etcd.service on {', '.join(m.node for m in started)}",
                    "every member healthy, one leader, writes succeed, earlier keys kept", {"error": str(err)}, False)
    wrote = _put(etcdctl, members, f"{key}/after")
    kept = etcdctl.etcdctl("get", f"{key}/before", "--print-value-only").text.strip() == "labctl drill"
    etcdctl.etcdctl("del", "--prefix", DRILL_KEY)
    return Step("members back", f"started etcd.service on {', '.join(m.node for m in started)}",
                "every member healthy, one leader, writes succeed, earlier keys kept",
                {"healthy": status.healthy, "leader": status.leader, "write": "ok" if wrote.code == 0 else "refused",
                 "kept": kept},
                wrote.code == 0 and kept)


def lab_for_drills(plan: Plan, backend: Backend, state: LabState, route: ssh.Route, events: Events,
                   stats_password: str) -> DrillLab:
    """A :class:`DrillLab` over ssh and the lab's backend: nodes go off under the lab's lock (so no `up` runs
    meanwhile) and come back as `labctl start` brings them, waiting until ready."""

    def remote(node: str, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = SSH_TIMEOUT) -> Ran:
        return ssh.run_remote(route, node, argv, stdin=stdin, timeout=timeout)

    def power_off(node: NodePlan) -> str:
        with lab_lock(state, "drill", clock=time.monotonic, sleep=time.sleep):
            return backend.stop_node(node, 0.0, time.monotonic, time.sleep)

    def power_on(node: NodePlan) -> None:
        start(plan, backend, state, [node], events)

    return DrillLab(plan, remote, lambda node, argv: ssh.RemoteLines(route, node, argv), power_off, power_on,
                    stats_password, events.note)
