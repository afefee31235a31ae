"""A running lab that grows: what the lab must learn of its new nodes, the token, the pushes over ssh."""

import os
import time

import pytest

from labctl.access import ssh
from labctl.guest.roles import render_dnsmasq_conf, render_haproxy_cfg
from labctl.lab.config import parse_lab
from labctl.lab.drift import plan_fingerprint
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.ops import grow
from labctl.pki.secrets import ensure_secrets


def lab(masters=3, workers=1, lbs=1):
    return plan_lab(parse_lab(f"nodes: {{master: {{count: {masters}}}, worker: {{count: {workers}}}, "
                              f"lb: {{count: {lbs}}}}}", "t"))


def test_growth_of_a_new_lab_is_nothing():
    assert grow.plan_growth(lab(), None) == grow.Growth((), ())


def test_an_added_worker_needs_dns_and_a_token_an_added_master_also_the_backends():
    built = plan_fingerprint(lab(workers=1))
    worker = grow.plan_growth(lab(workers=2), built)
    assert [n.name for n in worker.added] == ["worker2"] and worker.refresh == ("token", "dns")
    master = grow.plan_growth(lab(masters=5), built)
    assert [n.name for n in master.added] == ["master4", "master5"]
    assert master.refresh == ("token", "dns", "haproxy")
    assert grow.plan_growth(lab(), built).refresh == ()
    assert grow.plan_growth(lab(lbs=2), plan_fingerprint(lab())).refresh == ("dns",)


@pytest.fixture
def state(tmp_path):
    state = LabState.for_lab("k8s", tmp_path)
    ensure_secrets(state, lab())
    return state


def test_a_young_token_is_kept_an_old_one_renewed_and_pending_work_recorded(state):
    plan = lab(workers=2)
    growth = grow.plan_growth(plan, plan_fingerprint(lab()))
    first = ensure_secrets(state, plan).bootstrap_token
    assert grow.prepare(plan, state, growth) == ("dns",)  # the init token is hours from expiry
    assert ensure_secrets(state, plan).bootstrap_token == first
    token = state.root / "pki" / "token"
    aged = time.time() - grow.TOKEN_REUSE_SECONDS - 60
    os.utime(token, (aged, aged))
    assert grow.prepare(plan, state, growth) == ("token", "dns")
    renewed = ensure_secrets(state, plan).bootstrap_token
    assert renewed != first and state.record()["refresh"] == ["token", "dns"]
    # An interrupted `up` left the work pending: the next one keeps it, and keeps its token.
    assert grow.prepare(plan, state, grow.Growth((), ())) == ("token", "dns")
    assert ensure_secrets(state, plan).bootstrap_token == renewed


def test_refresh_pushes_each_file_to_its_nodes_and_strikes_it_off(state, monkeypatch):
    plan = lab(masters=5, lbs=2)
    state.save_record({"refresh": ["token", "dns", "haproxy"]})
    secrets = ensure_secrets(state, plan)
    pushed, notes = [], []
    monkeypatch.setattr(ssh, "run_checked", lambda argv, what, timeout, data: pushed.append((argv, data)) or "")
    route = ssh.Route(plan, state, via_gateway=False)
    grow.refresh(plan, state, route, ("token", "dns", "haproxy"), notes.append)
    targets = [(argv[argv.index("--") + 1].split("@")[1], argv[-1]) for argv, _ in pushed]
    ip = {node.name: str(node.internal.address.ip) for node in plan.nodes}
    assert targets == [(ip["master1"], "token"), (ip["gateway"], "dns"), (ip["lb1"], "haproxy"), (ip["lb2"], "haproxy")]
    assert all(argv[-4:-1] == ["sudo", "-n", "/usr/local/lib/labctl/refresh"] for argv, _ in pushed)
    assert pushed[0][1] == secrets.bootstrap_token + "\n"
    assert pushed[1][1] == render_dnsmasq_conf(plan) and "master5" in pushed[1][1]
    assert pushed[2][1] == render_haproxy_cfg(plan, plan.node("lb1"), secrets) and "server master5" in pushed[2][1]
    assert state.record()["refresh"] == [] and len(notes) == 4


def test_a_failed_refresh_keeps_what_is_left(state, monkeypatch):
    plan = lab(workers=2)
    state.save_record({"refresh": ["token", "dns"]})

    def fail_on_dns(argv, what, timeout, data):
        if argv[-1] == "dns":
            raise ssh.LabError(f"{what}: dnsmasq: bad option")
        return ""

    monkeypatch.setattr(ssh, "run_checked", fail_on_dns)
    with pytest.raises(ssh.LabError, match="refreshing dns on gateway: dnsmasq: bad option"):
        grow.refresh(plan, state, ssh.Route(plan, state, via_gateway=False), ("token", "dns"), lambda _: None)
    assert state.record()["refresh"] == ["dns"]
