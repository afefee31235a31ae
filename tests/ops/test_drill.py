"""labctl.ops.drill against in-memory labs: what each drill does, observes and reports, and its refusals."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from labctl.access.ssh import Ran
from labctl.errors import ConfigError, LabError
from labctl.lab.config import parse_lab
from labctl.lab.plan import NodePlan, plan_lab
from labctl.ops.drill import DRILL_KEY, DrillLab, run_drill
from tests.ops.fake_etcd import FakeEtcd


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Probes:
    """The /readyz probe loop: an answer every 0.5 s of the fake clock, failing while ``failing()`` says so."""

    def __init__(self, clock: Clock, failing) -> None:
        self.clock, self.failing, self.seen = clock, failing, []
        self.last = clock.now
        self.stopped = False

    def since(self, moment: float) -> list[tuple[float, str]]:
        while self.last + 0.5 <= self.clock.now:
            self.last += 0.5
            self.seen.append((self.last, f"{int(self.last)} {'000' if self.failing(self.last) else '200'}"))
        return [(at, line) for at, line in self.seen if at >= moment]

    def stop(self) -> None:
        self.stopped = True


class FakeLab:
    """Two load balancers, three masters: the VIP, HAProxy's view and the nodes' power, in memory."""

    def __init__(self, text: str = "nodes: {lb: {count: 2}}") -> None:
        self.plan = plan_lab(parse_lab(text, "t"))
        self.clock = Clock()
        self.off: dict[str, float] = {}  # node -> when it went off
        self.vip = "lb1"
        self.calls: list[str] = []
        self.probes: Probes | None = None

    def failing(self, at: float) -> bool:
        # 3 s without an answer after lb1 goes off; a dead master fails every third probe for 12 s.
        lb_gap = "lb1" in self.off and at - self.off["lb1"] < 3
        master_gap = "master3" in self.off and at - self.off["master3"] < 12 and int(at * 2) % 3 == 0
        return lb_gap or master_gap

    def remote(self, node: str, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = 0) -> Ran:
        if node in self.off:
            return Ran(255, b"", b"no route to host")
        if argv[:2] == ["ip", "-o"]:
            if "lb1" in self.off and self.clock.now - self.off["lb1"] > 2:
                self.vip = "lb2"
            holds = self.vip == node
            return Ran(0, f"2: lan0 inet {self.plan.api_address if holds else '10.0.0.9'}/24 scope global\n".encode(),
                       b"")
        if argv[0] == "curl":
            assert b"admin:" in stdin and b"admin:" not in " ".join(argv).encode()  # the password on stdin only
            down = "master3" in self.off and self.clock.now - self.off["master3"] > 15
            rows = ["# pxname,svname,status"] + [f"kube-apiserver,master{i},{'DOWN' if down and i == 3 else 'UP'}"
                                                 for i in (1, 2, 3)]
            return Ran(0, ("\n".join(rows) + "\n").encode(), b"")
        return Ran(127, b"", b"unexpected")

    def stream(self, node: str, argv: Sequence[str]) -> Probes:
        assert argv[:2] == ["sh", "-c"] and argv[3] == "api-probe.sh" and argv[4].endswith("/readyz")
        self.probes = Probes(self.clock, self.failing)
        return self.probes

    def power_off(self, node: NodePlan) -> str:
        self.calls.append(f"off {node.name}")
        self.off[node.name] = self.clock.now
        return "forced off"

    def power_on(self, node: NodePlan) -> None:
        self.calls.append(f"on {node.name}")
        self.clock.sleep(60)  # the boot
        self.off.pop(node.name)
        if node.name == "lb1":
            self.vip = "lb1"

    def drill_lab(self) -> DrillLab:
        return DrillLab(self.plan, self.remote, self.stream, self.power_off, self.power_on, "secret",
                        clock=self.clock, sleep=self.clock.sleep)


def test_lb_drill_moves_the_vip_counts_failed_probes_and_brings_lb1_back():
    lab = FakeLab()
    result = run_drill("lb", lab.drill_lab())
    assert result.held and result.restored, json.dumps(result.as_dict(), indent=2)
    stop, start = result.steps
    assert stop.name == "stop lb1" and stop.observed["vip_on"] == "lb2"
    assert 0 < stop.observed["failed_probes"] <= 7 and stop.observed["vip_moved_after_s"] is not None
    assert start.observed["vip_on"] == "lb1"
    assert lab.calls == ["off lb1", "on lb1"] and lab.probes is not None and lab.probes.stopped
    json.dumps(result.as_dict())  # JSON-ready


def test_master_drill_sees_haproxy_route_around_the_stopped_master():
    lab = FakeLab("nodes: {lb: {count: 2}, master: {count: 3}}")
    result = run_drill("master", lab.drill_lab())
    assert result.held and result.restored, json.dumps(result.as_dict(), indent=2)
    stop, start = result.steps
    assert stop.observed["haproxy"]["master3"].startswith("DOWN") and stop.observed["failed_probes"] > 0
    assert start.observed["haproxy"]["master3"] == "UP"
    assert lab.calls == ["off master3", "on master3"]


def test_a_drill_that_fails_midway_still_brings_the_node_back():
    lab = FakeLab()
    real = lab.remote

    def breaking(node: str, argv: Sequence[str], **kw) -> Ran:
        if "lb1" in lab.off:
            raise LabError("ssh broke")
        return real(node, argv, **kw)

    lab.remote = breaking  # type: ignore[method-assign]
    with pytest.raises(LabError, match="ssh broke"):
        run_drill("lb", lab.drill_lab())
    assert lab.calls == ["off lb1", "on lb1"] and lab.probes is not None and lab.probes.stopped


def test_a_node_that_does_not_come_back_is_named_with_the_command_to_run():
    lab = FakeLab()

    def broken_start(node: NodePlan) -> None:
        lab.calls.append(f"on {node.name}")
        raise LabError("starting k8s-lb1: domain is gone")

    lab.power_on = broken_start  # type: ignore[method-assign]
    with pytest.raises(LabError) as failed:
        run_drill("lb", lab.drill_lab())
    assert str(failed.value) == ("drill lb: lb1 could not be powered back on: starting k8s-lb1: domain is gone "
                                 "(run `labctl start lb1`)")
    assert lab.calls == ["off lb1", "on lb1"]


def test_etcd_member_drill_keeps_quorum_with_one_down_loses_it_with_two_and_recovers():
    plan = plan_lab(parse_lab("kubernetes: {etcd: external}", "t"))
    fake, clock = FakeEtcd(plan, leader="etcd2"), Clock()
    lab = DrillLab(plan, fake, lambda n, a: None, lambda n: "", lambda n: None, "x",  # type: ignore[arg-type,return-value]
                   clock=clock, sleep=clock.sleep)
    result = run_drill("etcd-member", lab)
    assert result.held and result.restored, json.dumps(result.as_dict(), indent=2)
    one, majority, back = result.steps
    assert one.observed["stopped"] == ["etcd2"] and one.observed["write"] == "ok" and one.observed["leader"] != "etcd2"
    assert majority.observed["stopped"] == ["etcd2", "etcd3"] and majority.observed["write"] == "refused"
    assert back.observed == {"healthy": 3, "leader": back.observed["leader"], "write": "ok", "kept": True}
    assert not fake.down and not any(key.startswith(DRILL_KEY) for key in fake.keys)


def test_refusals_are_one_line():
    stacked = FakeLab("nodes: {lb: {count: 1}, master: {count: 1}}")
    with pytest.raises(LabError, match="drill lb needs two load balancers"):
        run_drill("lb", stacked.drill_lab())
    with pytest.raises(LabError, match="drill master needs two or more masters"):
        run_drill("master", stacked.drill_lab())
    with pytest.raises(LabError, match=r"drill etcd-member needs kubernetes\.etcd: external"):
        run_drill("etcd-member", stacked.drill_lab())
    with pytest.raises(ConfigError, match="unknown drill 'lbb'; drills: lb, master, etcd-member") as caught:
        run_drill("lbb", stacked.drill_lab())
    assert "did you mean 'lb'" in str(caught.value) and "\n" not in str(caught.value)
