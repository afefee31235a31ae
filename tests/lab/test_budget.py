"""The budget table: every node-side wait and the host's timeout come from one place in the plan."""

import pytest

from labctl.guest.kubeadm import kubeadm_documents
from labctl.guest.roles import lab_env
from labctl.lab.accel import KVM, TCG
from labctl.lab.budget import BUDGETS, budget_for, duration
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets
from tests.guest.manifests import with_cni

SHAPES = ["name: k8s\n", "nodes: {lb: {count: 2}, master: {count: 5}, worker: {count: 3}}\n",
          "nodes: {master: {count: 1}, worker: {count: 0}}\n"]
DEPENDS = {"dns": ["gateway"], "lb": ["lb1"], "api": ["master1"]}  # "previous": master N-1


@pytest.mark.parametrize("accel", [KVM, TCG])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_node_side_wait_ends_before_the_host_gives_up(accel, shape):
    plan = plan_lab(parse_lab(shape, "t")).with_accel(accel)
    budget = plan.budget
    boot = budget.budget.boot
    for node in plan.nodes:
        mine = budget.nodes[node.name]
        assert boot + mine.deadline < budget.host_timeout, node.name
        for wait, seconds in mine.waits.items():
            assert seconds <= mine.deadline, (node.name, wait)
            others = DEPENDS.get(wait, [f"master{node.index - 1}"])
            # A wait outlasts the node it waits for (plus the boot skew): it never gives up on a live one.
            assert all(seconds >= budget.nodes[other].deadline + boot for other in others), (node.name, wait)


def test_tcg_gets_more_time_than_kvm_everywhere():
    kvm, tcg = BUDGETS[KVM], BUDGETS[TCG]
    for field in ("boot", "apt_lock", "apt", "step", "cni"):
        assert getattr(tcg, field) > getattr(kvm, field), field
    assert all(t > k for t, k in zip(vars(tcg.kubeadm).values(), vars(kvm.kubeadm).values(), strict=True))
    assert budget_for(None) is tcg  # `auto` not resolved yet: never too short
    plan = plan_lab(parse_lab("name: k8s\n", "t"))
    assert plan.accel is None and plan.budget.host_timeout == plan.with_accel(TCG).budget.host_timeout
    assert plan.with_accel(KVM).budget.host_timeout < plan.with_accel(TCG).budget.host_timeout
    assert plan_lab(parse_lab("accel: kvm\n", "t")).accel == KVM  # an explicit choice needs no hypervisor


@pytest.mark.parametrize(("accel", "expected"), [
    (KVM, {"controlPlaneComponentHealthCheck": "4m0s", "kubeletHealthCheck": "4m0s", "discovery": "5m0s",
           "tlsBootstrap": "5m0s", "kubernetesAPICall": "1m0s"}),
    (TCG, {"controlPlaneComponentHealthCheck": "10m0s", "kubeletHealthCheck": "10m0s", "discovery": "10m0s",
           "tlsBootstrap": "10m0s", "kubernetesAPICall": "2m0s"}),
])
def test_kubeadm_timeouts_follow_the_accelerator(accel, expected, tmp_path):
    plan = with_cni(plan_lab(parse_lab("name: k8s\n", "t")).with_accel(accel))
    secrets = ensure_secrets(LabState.for_lab("k8s", tmp_path), plan)
    init, _cluster, _kubelet = kubeadm_documents(plan, plan.node("master1"), secrets)
    (join,) = kubeadm_documents(plan, plan.node("worker1"), secrets)
    assert init["timeouts"] == join["timeouts"] == expected
    # The node bounds one kubeadm call by every timeout kubeadm itself may spend, in a row.
    assert int(lab_env(plan, plan.node("worker1"))["KUBEADM_TIMEOUT"]) == plan.budget.budget.kubeadm.command
    old = with_cni(plan_lab(parse_lab('kubernetes: {version: "1.30"}\n', "t")).with_accel(accel))
    assert "timeouts" not in kubeadm_documents(old, old.node("master1"), secrets)[0]  # v1beta3 has none


def test_the_env_file_carries_the_waits_of_the_budget():
    plan = with_cni(plan_lab(parse_lab("name: k8s\n", "t")).with_accel(KVM))
    waits = plan.budget.nodes
    assert lab_env(plan, plan.node("lb1"))["DNS_WAIT"] == str(waits["lb1"].waits["dns"])
    assert lab_env(plan, plan.node("master1"))["LB_WAIT"] == str(waits["master1"].waits["lb"])
    assert lab_env(plan, plan.node("master2"))["PREVIOUS_WAIT"] == str(waits["master2"].waits["previous"])
    assert lab_env(plan, plan.node("worker1"))["API_WAIT"] == str(waits["worker1"].waits["api"])
    assert lab_env(plan, plan.node("gateway"))["APT_LOCK_WAIT"] == str(BUDGETS[KVM].apt_lock)


def test_durations_as_kubeadm_writes_them():
    assert [duration(s) for s in (60, 240, 600, 3600, 4530)] == ["1m0s", "4m0s", "10m0s", "1h0m0s", "1h15m30s"]
