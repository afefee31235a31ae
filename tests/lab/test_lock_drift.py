"""The per-lab lock and the refusal to half-apply a changed lab.yaml."""

import json
import os
import subprocess
import sys
import time

import pytest

from labctl.lab.config import parse_lab
from labctl.lab.drift import plan_fingerprint, unappliable_changes
from labctl.lab.lock import BusyError, lab_lock
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState

HOLD = """
import sys, time
from labctl.lab.lock import lab_lock
from labctl.lab.state import LabState
state = LabState.for_lab("k8s", __import__("pathlib").Path(sys.argv[1]))
with lab_lock(state, "up", clock=time.monotonic, sleep=time.sleep):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.mark.races
def test_second_holder_is_refused_with_pid_and_command(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        state = LabState.for_lab("k8s", tmp_path)
        waited = []
        with pytest.raises(BusyError) as caught, lab_lock(state, "destroy", wait=1.0, clock=time.monotonic,
                                                          sleep=lambda s: waited.append(s) or time.sleep(s)):
            pass
        assert str(caught.value).startswith(f"lab `k8s` is busy (pid {holder.pid}, command up)")
        assert waited, "waited briefly before refusing"
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # The holder died without unlocking: its lock is taken over at once.
    with lab_lock(LabState.for_lab("k8s", tmp_path), "up", wait=0, clock=time.monotonic, sleep=time.sleep):
        record = json.loads((tmp_path / "k8s" / "lock").read_text())
        assert record == {"pid": os.getpid(), "command": "up"}


def fingerprint(text):
    return plan_fingerprint(plan_lab(parse_lab(text, "t")))


def test_adding_workers_is_applicable_in_place():
    assert unappliable_changes(fingerprint("name: k8s"), fingerprint("nodes: {worker: {count: 4}}")) == []


def test_changes_that_cannot_be_applied_are_listed():
    built = fingerprint("name: k8s")
    wanted = fingerprint("networks: {internal: {cidr: 10.50.0.0/24}}\n"
                         "nodes: {worker: {count: 1}, master: {memory: 4096}}")
    changes = unappliable_changes(built, wanted)
    assert any(c.startswith("networks.internal.cidr 10.213.") and c.endswith("→ 10.50.0.0/24") for c in changes)
    assert "worker2 removed" in changes
    assert "master1.memory 2048 → 4096" in changes
    assert not any(".nics" in c for c in changes), "address changes follow from the subnet change"
    moved = unappliable_changes(built, fingerprint("nodes: {worker: {count: 1}, lb: {count: 2}}"))
    api = str(plan_lab(parse_lab("name: k8s", "t")).api_address)
    assert moved == [f"api {api} → {api.rsplit('.', 1)[0]}.10", "worker2 removed"], "a second LB moves the API to a VIP"


def test_the_etcd_topology_and_its_members_are_fixed_once_built():
    stacked, external = fingerprint("name: k8s"), fingerprint("kubernetes: {etcd: external}")
    assert unappliable_changes(stacked, external) == ["etcd stacked → external"]
    five = fingerprint("kubernetes: {etcd: external}\nnodes: {etcd: {count: 5}}")
    assert unappliable_changes(external, five) == [f"etcd{i} added (etcd members are fixed when the cluster forms)"
                                                   for i in (4, 5)]
    assert unappliable_changes(external, fingerprint("kubernetes: {etcd: external}\nnodes: {worker: {count: 3}}")) == []
    older = {key: value for key, value in stacked.items() if key != "etcd"}  # recorded before labctl knew etcd
    assert unappliable_changes(older, stacked) == []
