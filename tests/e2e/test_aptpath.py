"""End to end, the official image's apt path (issue #13): role packages installed at first boot through the
lab's mirror only, real containerd, the Kubernetes packages from a signed repository labctl is pointed
at, bootstraps that resume and reruns that tell the truth. One boot (tests/e2e/aptpath.py) carries the
drills and then every check; the wall time of each stage is printed and written to timings.json. Last,
the real kubeadm's preflight (issue #18, tests/e2e/preflight.py) on master1 and worker1, which labctl
prepared and whose containerd is real.

Runs as root (a private libvirtd, the package proxy in its namespace); skipped elsewhere with the reason
printed, failed instead under ``CI``. ``pytest -v -s tests/e2e/test_aptpath.py`` runs it alone.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from labctl.access.readiness import parse_phases
from labctl.guest.kubeadm import PREFLIGHT_MINIMUMS
from labctl.guest.roles import KUBEADM_CONFIG
from tests.e2e import aptpath, preflight
from tests.e2e.aptpath import NODES, STANDIN_DIR, AptPath, aptpath_lab
from tests.e2e.session import require, skip_reason
from tests.harness import aptproxy
from tests.kubeadm.tooling import or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PREFLIGHT_NODES = ("master1", "worker1")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptPath]:
    require(skip_reason() or (None if aptproxy.can_run()[0] else aptproxy.can_run()[1]), "the apt-path lab")
    with aptpath_lab(tmp_path_factory.mktemp("aptpath")) as running:
        yield running


@pytest.fixture(autouse=True)
def timed(request: pytest.FixtureRequest, lab: AptPath) -> Iterator[None]:
    with lab.session.timings.measure(f"check {request.node.name.removeprefix('test_')}"):
        yield


def ready(lab: AptPath) -> None:
    if not lab.ready:
        pytest.fail(f"the lab did not get through its drills: {lab.first_error()}")


def calls(lab: AptPath, node: str, tool: str) -> list[dict[str, Any]]:
    entries = lab.lab.jsonl(node, f"{STANDIN_DIR}/calls.jsonl")
    return [c for c in entries if c["tool"] == tool and c["argv"][:1] != ["version"]]


def one_line(text: str, pattern: str) -> str:
    found = [line for line in text.splitlines() if re.search(pattern, line)]
    assert found, f"no line matching {pattern!r} in:\n{text[-3000:]}"
    return found[-1]


# --- the drills ----------------------------------------------------------------------------------


def test_a_node_stopped_in_the_middle_of_its_bootstrap_resumes_there_and_reaches_ready(lab: AptPath) -> None:
    seen = lab.drill("boot_and_stop_lb1_mid_install").seen
    assert seen["phases_when_stopped"][-1] == "packages" and (seen["stop"], seen["start"]) == (0, 0), seen
    after = lab.lab.console_path("lb1").read_bytes()[seen["offset"]:].decode(errors="replace")
    # Each phase line is on the console twice (the script's own write, and the journal's copy): once each here.
    phases = [e.phase for e in parse_phases(after, "lb1")]
    resumed = [phase for i, phase in enumerate(phases) if i == 0 or phase != phases[i - 1]]
    assert resumed[:2] == ["start", "packages"], resumed  # not `network` again: that step had completed
    assert "failed" not in resumed and resumed[-1] == "ready", resumed


def test_a_failure_at_packages_is_said_again_after_stop_and_start(lab: AptPath) -> None:
    first = lab.drill("first_failures").seen
    assert first["up"] == 1 and first["worker1"][-1] == "failed packages", first
    line = one_line("\n".join(first["up_tail"]), r"^labctl: error: node (worker1|master1) failed at step")
    assert re.search(r"node worker1 failed at step packages: apt-get install .*containerd.* failed 3 times|"
                     r"node master1 failed at step kubeadm-init: kubeadm init exited 1", line), line
    again = lab.drill("failed_node_stopped_and_started").seen
    assert again["stop"] == 0 and again["start"] == 1, again
    line = one_line("\n".join(again["start_tail"]), r"^labctl: error:")
    assert "node worker1 failed at step packages: apt-get install" in line and "--retry-failed" in line, line


def test_masters_first_init_failed_after_kubelet_conf_then_reset_and_retried_at_the_next_boot(lab: AptPath) -> None:
    assert lab.drill("first_failures").seen["master1"][-1] == "failed kubeadm-init"
    ready(lab)
    kubeadm = calls(lab, "master1", "kubeadm")
    assert [(c["argv"][0], c.get("exit")) for c in kubeadm] == [("init", 1), ("reset", 0), ("init", 0)], kubeadm
    assert "/etc/kubernetes/kubelet.conf" in kubeadm[1]["removed"]
    # reset removed the lab's CAs as the real one does; the bootstrap put them back before the retry.
    assert kubeadm[2]["pki"]["ca.crt"] == kubeadm[0]["pki"]["ca.crt"]
    rendered = lab.lab.ssh_ok("master1", "sudo", "cat", "/etc/labctl/kubeadm.yaml")
    assert kubeadm[2]["config"] == rendered  # the stand-in got the configuration labctl rendered
    init = next(d for d in yaml.safe_load_all(rendered) if d["kind"] == "InitConfiguration")
    assert init["timeouts"]["controlPlaneComponentHealthCheck"] == "10m0s"  # TCG's budget


def test_a_join_that_fails_twice_ends_with_the_nodes_own_line_in_status_and_up(lab: AptPath) -> None:
    first = lab.drill("retry_after_the_pin_goes").seen
    assert first["up"] == 1, first
    assert "attempt 1 of 2" in one_line("\n".join(first["up_tail"]), r"^labctl: error: node worker1 failed at step "
                                                                     r"kubeadm-join")
    seen = lab.drill("join_fails_twice").seen
    own = one_line("\n".join(seen["start_tail"]), r"^labctl: error: node worker1 failed at step kubeadm-join")
    assert "kubeadm join exited 1 (attempt 2 of 2): error execution phase" in own, own
    [row] = [r for r in seen["status"] if r["name"] == "worker1"]
    assert row["phase"] == "failed kubeadm-join" and row["error"].startswith("kubeadm-join: kubeadm join exited 1 "
                                                                             "(attempt 2 of 2)"), row
    assert f"worker1: {row['error']}" in seen["status_table"]
    assert seen["up"] == 1 and seen["up_seconds"] < 120, seen  # at once, not after a timeout
    assert "node worker1 failed at step kubeadm-join: kubeadm join exited 1 (attempt 2 of 2)" in "\n".join(
        seen["up_tail"])


def test_up_retry_failed_brings_the_lab_to_ready_once_the_cause_is_gone(lab: AptPath) -> None:
    ready(lab)
    assert lab.drill("retry_to_ready").seen["up"] == 0
    joins = [(c["argv"][0], c.get("exit")) for c in calls(lab, "worker1", "kubeadm")]
    assert joins == [("join", 1), ("reset", 0), ("join", 1), ("reset", 0), ("join", 0)], joins
    for node in NODES:
        assert lab.lab.phases(node)[-1] == "ready", (node, lab.lab.phases(node))


def test_up_with_the_state_directory_moved_away_refuses_in_one_line_and_changes_nothing(lab: AptPath) -> None:
    seen = lab.drill("state_moved_away").seen
    assert seen["code"] == 1 and seen["unchanged"] and not seen["recreated"], seen
    errors = [line for line in seen["stderr"].splitlines() if line.startswith("labctl: error:")]
    assert len(errors) == 1 and "holds its objects (lab id" in errors[0] and "labctl --name apt destroy" in errors[0]
    assert "Traceback" not in seen["stderr"]


# --- what the apt path installed -------------------------------------------------------------------


def test_real_containerd_runs_runc_with_the_systemd_cgroup_driver(lab: AptPath) -> None:
    ready(lab)
    for node in ("master1", "worker1"):
        version = lab.lab.ssh_ok(node, "containerd", "--version")
        assert " 1.7." in version, version  # Debian 13's, installed through the mirror
        dump = tomllib.loads(lab.lab.ssh_ok(node, "sudo", "containerd", "config", "dump"))
        cri = dump["plugins"]["io.containerd.grpc.v1.cri"]
        runc = cri["containerd"]["runtimes"]["runc"]
        assert runc["options"]["SystemdCgroup"] is True and runc["runtime_type"] == "io.containerd.runc.v2"
        assert runc["sandbox_mode"] == "podsandbox" and cri["sandbox_image"] == "registry.k8s.io/pause:3.10.1"
        assert lab.lab.ssh_ok(node, "systemctl", "is-active", "containerd").strip() == "active"


def test_the_kubernetes_packages_come_from_the_signed_repository_and_are_held(lab: AptPath) -> None:
    ready(lab)
    for node in ("master1", "worker1"):
        held = lab.lab.ssh_ok(node, "apt-mark", "showhold").split()
        # and etcdctl on a master (Debian's etcd-client, pinned to the release's etcd and held the same way)
        assert held == (["etcd-client"] if node == "master1" else []) + ["kubeadm", "kubectl", "kubelet"], held
        policy = lab.lab.ssh_ok(node, "apt-cache", "policy", "kubeadm")
        assert f"*** {aptpath.K8S_PACKAGES} " in policy.replace("\n", " ") or f"Installed: {aptpath.K8S_PACKAGES}" \
            in policy, policy
        assert lab.apt_url.rstrip("/") + "  Packages" in policy, policy  # a flat repository: "URL  Packages"
    requests = [json.loads(line) for line in (lab.work / "netns-server.jsonl").read_text().splitlines() if line]
    served = [r for r in requests if r["path"].startswith("/k8s/pool/")]
    assert {r["path"].rsplit("/", 1)[1].split("_")[0] for r in served if r["status"] == 200} >= {
        "kubeadm", "kubelet", "kubectl", "labctl-standin"}


def test_every_node_reads_only_the_mirror_whatever_the_images_cloud_init_keeps(lab: AptPath) -> None:
    ready(lab)
    for node in NODES:
        listed = lab.lab.ssh_ok(node, "ls", "/etc/apt/sources.list.d", "/etc/apt/labctl-aside").split()
        assert "debian.sources" in listed and listed.count("labctl.sources") == 1, (node, listed)
        sources = lab.lab.ssh_ok(node, "cat", "/etc/apt/sources.list.d/labctl.sources")
        assert f"URIs: {lab.mirror}\n" in sources and "Suites: trixie\n" in sources, sources
        read = set(re.findall(r"https?://\S+", lab.lab.ssh_ok(node, "apt-cache", "policy")))
        foreign = {uri for uri in read if not uri.startswith((lab.mirror, lab.apt_url.rstrip("/")))}
        assert read and not foreign, (node, read)  # apt's sources, as apt itself lists them
    fetched = (lab.proxy.layout.log_dir / "apt-cacher.log").read_text(errors="replace")
    for package in ("haproxy_", "dnsmasq_", "nftables_", "containerd_"):
        assert package in fetched, f"{package} never went through the package proxy"


def test_the_role_daemons_are_real_and_dnsmasq_leaves_resolveds_stub_alone(lab: AptPath) -> None:
    ready(lab)
    gateway = lab.lab.plan.gateway_address
    assert "table inet labctl" in lab.lab.ssh_ok("gateway", "sudo", "nft", "list", "ruleset")
    sockets = lab.lab.ssh_ok("gateway", "sudo", "ss", "-H", "-lnup", "sport", "=", ":53")
    assert f"{gateway}:53" in sockets and "dnsmasq" in sockets, sockets
    assert "127.0.0.53%lo:53" in sockets or "127.0.0.53:53" in sockets, sockets  # systemd-resolved's stub
    assert "0.0.0.0:53" not in sockets, sockets
    resolved = lab.lab.ssh_ok("gateway", "getent", "hosts", lab.lab.plan.api_name).split()
    assert resolved[0] == str(lab.lab.plan.api_address), resolved
    assert lab.lab.ssh_ok("lb1", "systemctl", "is-active", "haproxy").strip() == "active"
    for node in NODES:
        enabled = lab.lab.ssh_ok(node, "systemctl", "is-enabled", "unattended-upgrades", "systemd-resolved").split()
        assert enabled == ["enabled", "enabled"], (node, enabled)
        assert lab.lab.ssh_ok(node, "systemctl", "is-enabled", "labctl-bootstrap").strip() == "enabled"


def test_the_cni_manifest_fetched_on_the_host_is_what_master1_applied(lab: AptPath) -> None:
    ready(lab)
    [applied] = calls(lab, "master1", "kubectl")
    assert applied["manifest"] == "/etc/labctl/cni.yaml" and applied["manifest_sha256"] == lab.cni[1]


# --- the real kubeadm's preflight on the nodes labctl prepared (issue #18) -------------------------


@pytest.fixture(scope="module")
def tools(lab: AptPath) -> dict[str, float]:
    """The real kubeadm and crictl (tests/kubeadm builds them, cached) carried to master1 and worker1."""
    ready(lab)
    took = or_skip(preflight.carry_tools, lab.lab, PREFLIGHT_NODES)
    lab.session.timings.notes["preflight tools carried (s)"] = took
    return took


def test_real_containerd_answers_a_real_crictl_over_the_cri_socket_labctl_configured(
        lab: AptPath, tools: dict[str, float]) -> None:
    for node in PREFLIGHT_NODES:
        status = preflight.cri_status(lab.lab, node)
        assert status["version"]["runtimeName"] == "containerd", (node, status["version"])
        assert status["version"]["runtimeVersion"].startswith("1.7."), (node, status["version"])
        assert status["conditions"]["RuntimeReady"] is True, (node, status["conditions"])
        runc = status["config"]["containerd"]["runtimes"]["runc"]
        assert runc["options"]["SystemdCgroup"] is True, (node, runc)  # what the CRI plugin itself runs with


# What kubeadm must have looked at (its -v=1 lines), so a pass is not a preflight that checked nothing.
NODE_CHECKS = ("validating the container runtime", "validating availability of port 10250",
               "validating whether swap is enabled or not", "running system verification checks",
               "validating kubelet version", "checking whether the given node name is valid and reachable",
               "validating the presence of executable losetup")
MASTER_CHECKS = (*NODE_CHECKS, "validating availability of port 2379", "validating availability of port 2380",
                 "validating availability of port 10257", "validating availability of port 10259",
                 "validating the existence and emptiness of directory /var/lib/etcd",
                 "validating the contents of file /proc/sys/net/ipv4/ip_forward",
                 "validating Kubernetes and kubeadm version")


def test_kubeadm_init_preflight_passes_on_master1_with_the_configuration_labctl_wrote(
        lab: AptPath, tools: dict[str, float]) -> None:
    run = preflight.master_preflight(lab.lab, "master1")
    lab.session.timings.notes["preflight master1"] = run.summary()
    assert not preflight.problems(run), (preflight.problems(run), run.output[-4000:])
    assert set(run.configured) <= set(PREFLIGHT_MINIMUMS), run.configured  # labctl relaxes only these
    checked = "\n".join(run.validated)
    assert [c for c in MASTER_CHECKS if c not in checked] == [], checked
    # The cgroup driver kubeadm falls back to (containerd 1.7 cannot tell it) is the one labctl states.
    rendered = lab.lab.ssh_ok("master1", "sudo", "cat", KUBEADM_CONFIG)
    [kubelet] = [d for d in yaml.safe_load_all(rendered) if d["kind"] == "KubeletConfiguration"]
    assert kubelet["cgroupDriver"] == "systemd"


def test_kubeadm_join_preflight_passes_on_worker1_up_to_discovery(lab: AptPath, tools: dict[str, float]) -> None:
    run = preflight.worker_preflight(lab.lab, "worker1")
    lab.session.timings.notes["preflight worker1"] = run.summary()
    assert not preflight.problems(run), (preflight.problems(run), run.output[-4000:])
    assert run.configured == [], run.configured
    checked = "\n".join(run.validated)
    assert [c for c in NODE_CHECKS if c not in checked] == [], checked
    # past the node checks, on to discovery, which kubeadm's dry-run answers
    assert '[dryrun] Resource name "cluster-info", namespace "kube-public"' in run.output, run.output[-3000:]


def test_the_preflight_check_bites_a_master_with_ip_forwarding_off(lab: AptPath, tools: dict[str, float]) -> None:
    lab.lab.ssh_ok("master1", "sudo", "sysctl", "-w", "net.ipv4.ip_forward=0")
    try:
        run = preflight.master_preflight(lab.lab, "master1")
    finally:
        lab.lab.ssh_ok("master1", "sudo", "sysctl", "-w", "net.ipv4.ip_forward=1")
    assert run.exit != 0 and list(run.errors) == ["FileContent--proc-sys-net-ipv4-ip_forward"], run.summary()
    assert any("ip_forward" in p for p in preflight.problems(run))
