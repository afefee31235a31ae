"""End to end: the whole lab in real VMs under QEMU/TCG, in a private libvirtd of this test's own.

As root, the run makes its own network namespace with its own virtlogd and libvirtd
(tests/harness), builds (or takes from the machine's cache) an offline image with labctl's own
builder, pre-baked and carrying the kubeadm/kubelet/kubectl stand-ins (tests/e2e/standin), serves
it on 127.0.0.1 with its SHA-512 so labctl's real download-and-verify path runs, and boots
gateway, lb1, lb2 (keepalived holds the API address), master1..3 and worker1 with ``labctl up``.
The checks look from inside the VMs through ``labctl ssh``, run inside the namespace (so do the
``lb`` and ``master`` drills). After check 12 destroys it, a second lab of the other topology boots
in the same session: gateway, lb1, etcd1..3 (real etcd from Debian) and one master on them, for the
external-etcd checks (tests/e2e/etcd_checks.py); check 13 grows it by a worker. (A failed step named
with its node is proven by the apt-path lab's drills, tests/e2e/test_aptpath.py.) Whatever happens,
the teardown destroys the labs, ends every process it started by its pid and deletes the namespace.
The wall time of each phase and the total are
printed (``pytest -s``) and written to timings.json in the test's tmp dir and to
build/e2e-timings.json (shown at the end of the test run). ``make e2e`` runs this alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest
import yaml

from labctl.backends.libvirt.xml import read_tag
from labctl.guest.roles import NIC_NAMES, STATS_PORT
from labctl.pki.x509 import ca_cert_hash
from tests.e2e import etcd_checks
from tests.e2e.lab import Lab, phase_timeline
from tests.e2e.session import (
    CA_FILES,
    CLOCK_SKEW,
    E2E,
    HERE,
    LAB,
    MAIN_NODES,
    NETNS_PORT,
    SMALL_UP_TIMEOUT,
    STANDIN_DIR,
    failure_report,
    lab_for,
    lab_text,
    require,
    running_lab,
    skip_reason,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SMALL_NODES = ["gateway", "lb1", "etcd1", "etcd2", "etcd3", "master1"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    require(skip_reason(), "e2e")
    with running_lab(tmp_path_factory.mktemp("e2e")) as running:
        yield running


@pytest.fixture(autouse=True)
def timed(request: pytest.FixtureRequest, e2e: E2E) -> Iterator[None]:
    with e2e.timings.measure(f"check {request.node.name.removeprefix('test_')}"):
        yield


def node_facts(e2e: E2E) -> dict[str, Any]:
    """Every node's probe output (tests/e2e/probe.py), gathered once."""
    if not e2e.facts:
        plan = e2e.lab.plan
        names = [*plan.node_names, *(n.fqdn for n in plan.nodes), plan.api_name]

        def probe(node: str) -> Any:
            began = time.monotonic()
            facts = e2e.lab.python(node, HERE / "probe.py", str(plan.gateway_address), "--system", *names)
            e2e.timings.notes.setdefault("probe_s", {})[node] = {"total": round(time.monotonic() - began, 1),
                                                                 **facts.get("took", {})}
            return facts

        e2e.facts.update(e2e.lab.each_node(probe))
    return e2e.facts


# --- 1. cloud-init, names, addresses, routes, resolver ---------------------------------------


def cloud_init_problems(facts: dict[str, Any]) -> list[str]:
    status = facts["cloud_init"]["status"] or {}
    problems = []
    if status.get("status") != "done" or facts["cloud_init"]["rc"] != 0:
        problems.append(f"cloud-init status {status.get('status')!r} (rc {facts['cloud_init']['rc']}): "
                        f"{facts['cloud_init']['out'][-600:]}")
    if status.get("errors"):
        problems.append(f"cloud-init errors: {status['errors']}")
    if status.get("recoverable_errors"):
        problems.append(f"cloud-init warnings: {status['recoverable_errors']}")
    problems += [f"cloud-init.log: {line}" for line in facts["cloud_init_log_problems"]]
    return problems


def network_problems(e2e: E2E, node_name: str, facts: dict[str, Any]) -> list[str]:
    plan = e2e.lab.plan
    node = plan.node(node_name)
    problems = []
    links = {link.get("address"): link for link in facts["links"] or []}
    for nic in node.nics:
        link = links.get(nic.mac)
        if link is None:
            problems.append(f"no NIC with MAC {nic.mac}")
            continue
        addresses = {(a["local"], a["prefixlen"]) for a in link.get("addr_info", []) if a.get("family") == "inet"}
        if link["ifname"] != NIC_NAMES[nic.network]:
            problems.append(f"MAC {nic.mac} is {link['ifname']}, not {NIC_NAMES[nic.network]}")
        if (str(nic.address.ip), nic.address.network.prefixlen) not in addresses:
            problems.append(f"{link['ifname']} has {sorted(addresses)}, not {nic.address}")
    nat_host = plan.network("nat").host_address
    via, dev = (str(nat_host.ip), "wan0") if node.role == "gateway" and nat_host else (str(plan.gateway_address),
                                                                                       "lan0")
    routes = [(r.get("gateway"), r.get("dev")) for r in facts["routes"] or []]
    if routes != [(via, dev)]:
        problems.append(f"default routes {routes}, expected [({via!r}, {dev!r})]")
    resolver_line = next((line for line in facts["resolvers"].splitlines() if f"({dev})" in line), "")
    if via not in resolver_line.split():
        problems.append(f"resolver of {dev} is {resolver_line!r}, expected {via}")
    return problems


def test_1_every_node_booted_cleanly_with_its_names_address_route_and_resolver(e2e: E2E) -> None:
    facts = node_facts(e2e)
    problems = {}
    for node in e2e.lab.plan.nodes:
        found = cloud_init_problems(facts[node.name]) + network_problems(e2e, node.name, facts[node.name])
        if facts[node.name]["hostname"] != node.name:
            found.append(f"hostname {facts[node.name]['hostname']!r}")
        if facts[node.name]["fqdn"] != node.fqdn:
            found.append(f"fqdn {facts[node.name]['fqdn']!r}, expected {node.fqdn}")
        if found:
            problems[node.name] = found
    assert not problems, json.dumps(problems, indent=2)


# --- 2. forwarding and masquerading -----------------------------------------------------------


def test_2_gateway_forwards_and_masquerades_to_the_nat_network(e2e: E2E) -> None:
    plan = e2e.lab.plan
    nat_host = plan.network("nat").host_address
    assert nat_host is not None
    uplink = str(next(nic.address.ip for nic in plan.node("gateway").nics if nic.network == "nat"))
    before = len(e2e.netns_server.requests())
    seen = e2e.lab.ssh_ok("worker1", "curl", "-sS", "--max-time", "15",
                          f"http://{nat_host.ip}:{NETNS_PORT}/whoami").strip()
    assert seen == uplink, f"the namespace saw worker1's request from {seen}, not the gateway's uplink {uplink}"
    [request] = [r for r in e2e.netns_server.requests()[before:] if r["path"] == "/whoami"]
    assert request["peer"] == uplink


# --- 3. lab DNS --------------------------------------------------------------------------------


def test_3_every_name_resolves_from_every_node_through_the_gateway(e2e: E2E) -> None:
    plan = e2e.lab.plan
    expected = {plan.api_name: [str(plan.api_address)]}
    for node in plan.nodes:
        expected[node.name] = expected[node.fqdn] = [str(node.internal.address.ip)]
    problems = {}
    for name, facts in node_facts(e2e).items():
        wrong = {q: a for q, a in facts["dns_via_gateway"].items() if (a or {}).get("a") != expected[q]}
        # Through the node's own resolver too (systemd-resolved, whose server for the lab's domain is the
        # gateway; on the gateway, its own dnsmasq). Not the node's own names, which /etc/hosts answers
        # (127.0.1.1: cloud-init's manage_etc_hosts) before DNS is asked.
        own = {name, plan.node(name).fqdn}
        wrong |= {f"system:{q}": a for q, a in facts["dns_system"].items() if q not in own and a != expected[q]}
        if wrong:
            problems[name] = wrong
    assert not problems, json.dumps(problems, indent=2)


# --- 4. HAProxy health checks ---------------------------------------------------------------


def haproxy_states(e2e: E2E) -> dict[str, str]:
    """Each master's server status in lb1's kube-apiserver backend, from the stats CSV."""
    lab = e2e.lab
    lb = lab.plan.node("lb1")
    password = (lab.pki_dir / "haproxy-stats").read_text().strip()
    text = lab.ssh_ok("lb1", "curl", "-sS", "--max-time", "10", "-u", f"admin:{password}",
                      f"http://{lb.internal.address.ip}:{STATS_PORT}/;csv")
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {row["svname"]: row["status"] for row in rows if row["pxname"] == "kube-apiserver"
            and row["svname"].startswith("master")}


def wait_for_states(e2e: E2E, wanted: dict[str, str], timeout: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = haproxy_states(e2e)
        if all(states.get(name, "").startswith(status) for name, status in wanted.items()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"HAProxy states {states}, wanted {wanted} within {timeout:.0f}s")
        time.sleep(3)


def test_4_haproxy_marks_a_master_down_when_its_apiserver_stops(e2e: E2E) -> None:
    all_up = {f"master{i}": "UP" for i in (1, 2, 3)}
    wait_for_states(e2e, all_up, timeout=60)
    e2e.lab.ssh_ok("master3", "sudo", "systemctl", "stop", "labctl-fake-apiserver.service")
    try:
        began = time.monotonic()
        states = wait_for_states(e2e, {**all_up, "master3": "DOWN"})
        e2e.timings.notes["haproxy_down_after_s"] = round(time.monotonic() - began, 1)
        assert states["master1"] == "UP" and states["master2"] == "UP", states
    finally:
        e2e.lab.ssh_ok("master3", "sudo", "systemctl", "start", "labctl-fake-apiserver.service")
    wait_for_states(e2e, all_up)


# --- 4b, 4c. drills: the load balancer holding the VIP, then a master, powered off and back --------------


def drill(e2e: E2E, name: str) -> dict[str, Any]:
    began = time.monotonic()
    done = e2e.lab.labctl_in_netns("drill", name, "--output", "json", timeout=1500)
    assert done.returncode == 0, f"drill {name} exited {done.returncode}: {done.stdout[-3000:]} {done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    result["took_s"] = round(time.monotonic() - began, 1)
    e2e.timings.notes[f"drill_{name}"] = result
    assert result["held"] and result["restored"], json.dumps(result, indent=2)
    return result


def test_4b_drill_lb_moves_the_vip_to_lb2_and_the_api_keeps_answering(e2e: E2E) -> None:
    stop, start = drill(e2e, "lb")["steps"]
    assert stop["name"] == "stop lb1" and stop["observed"]["vip_on"] == "lb2", stop
    assert stop["observed"]["api_steady_after_s"] is not None and stop["observed"]["probes"] > 0, stop
    print(f"[e2e] drill lb: {stop['observed']['failed_probes']} of {stop['observed']['probes']} probes failed while "
          f"the VIP moved ({stop['observed']['vip_moved_after_s']}s)", flush=True)
    assert start["observed"]["vip_on"] == "lb1", start


def test_4c_drill_master_haproxy_routes_around_a_stopped_master(e2e: E2E) -> None:
    stop, start = drill(e2e, "master")["steps"]
    assert stop["name"] == "stop master3" and stop["observed"]["haproxy"]["master3"].startswith("DOWN"), stop
    assert stop["observed"]["haproxy"]["master1"] == "UP" and stop["observed"]["haproxy"]["master2"] == "UP", stop
    print(f"[e2e] drill master: {stop['observed']['failed_probes']} of {stop['observed']['probes']} probes failed "
          f"until HAProxy marked master3 DOWN ({stop['observed']['marked_down_after_s']}s)", flush=True)
    assert start["observed"]["haproxy"]["master3"] == "UP", start
    wait_for_states(e2e, {f"master{i}": "UP" for i in (1, 2, 3)})


# --- 5. what kubeadm, kubectl and kubelet were asked to do ----------------------------------


def calls_of(lab: Lab, node: str, tool: str, command: str | None = None) -> list[dict[str, Any]]:
    """What the stand-in recorded of ``tool`` (and ``command``) on ``node``."""
    calls = lab.jsonl(node, f"{STANDIN_DIR}/calls.jsonl")
    return [c for c in calls if c["tool"] == tool and (command is None or c["argv"][:1] == [command])]


def config_docs(call: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(call["config"]) if doc}


def node_ip_of(doc: dict[str, Any]) -> str | None:
    extra = doc["nodeRegistration"].get("kubeletExtraArgs") or []
    pairs = extra.items() if isinstance(extra, dict) else ((a["name"], a["value"]) for a in extra)
    return dict(pairs).get("node-ip")


def first_readyz_from(events: list[dict[str, Any]], peer: str) -> float | None:
    times = [e["time"] for e in events
             if e.get("event") == "request" and e.get("peer") == peer and e["path"] == "/readyz" and e["status"] == 200]
    return min(times) if times else None


def test_5_standins_show_init_then_ordered_joins_with_the_hosts_token_and_ca_hash(e2e: E2E) -> None:
    lab = e2e.lab
    plan = lab.plan
    token = (lab.pki_dir / "token").read_text().strip()
    ca_hash = ca_cert_hash((lab.pki_dir / "ca.crt").read_text())
    ip = {node.name: str(node.internal.address.ip) for node in plan.nodes}
    spec = plan.lab.kubernetes

    [init] = calls_of(lab, "master1", "kubeadm", "init")
    assert init["argv"] == ["init", "--config", "/etc/labctl/kubeadm.yaml"] and init["exit"] == 0, init
    docs = config_docs(init)
    assert docs["ClusterConfiguration"]["controlPlaneEndpoint"] == f"{plan.api_name}:6443"
    assert docs["ClusterConfiguration"]["networking"] == {"podSubnet": str(spec.pod_cidr),
                                                          "serviceSubnet": str(spec.service_cidr)}
    assert [t["token"] for t in docs["InitConfiguration"]["bootstrapTokens"]] == [token]
    assert docs["InitConfiguration"]["localAPIEndpoint"]["advertiseAddress"] == ip["master1"]
    assert node_ip_of(docs["InitConfiguration"]) == ip["master1"]
    [applied] = calls_of(lab, "master1", "kubectl")
    assert applied["manifest_sha256"] == e2e.cni[1] and "labctl-e2e" in applied["manifest_text"], applied

    joins, apiservers = {}, {}
    for node in ("master1", "master2", "master3"):
        apiservers[node] = lab.jsonl(node, f"{STANDIN_DIR}/apiserver.jsonl")
    for node in ("master2", "master3", "worker1"):
        [joins[node]] = calls_of(lab, node, "kubeadm", "join")
        call = joins[node]
        assert call["argv"] == ["join", "--config", "/etc/labctl/kubeadm.yaml"] and call["exit"] == 0, call
        join = config_docs(call)["JoinConfiguration"]
        discovery = join["discovery"]["bootstrapToken"]
        assert discovery["token"] == token and discovery["caCertHashes"] == [ca_hash], discovery
        assert discovery["apiServerEndpoint"] == f"{plan.api_name}:6443"
        assert node_ip_of(join) == ip[node]
        assert (call["probe"]["body"], call["probe"]["ca_hash"]) == ("ok", ca_hash), call["probe"]
        if node.startswith("master"):
            assert join["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == ip[node], join
        else:
            assert "controlPlane" not in join, join

    order = {}
    for node, previous in (("master2", "master1"), ("master3", "master2")):
        listening = next(e["time"] for e in apiservers[previous] if e.get("event") == "listening")
        waited = first_readyz_from(apiservers[previous], ip[node])
        assert waited is not None, f"{node} never asked {previous}'s /readyz before joining"
        started = joins[node]["time"]
        assert listening <= waited <= started + CLOCK_SKEW, (previous, listening, waited, started)
        order[node] = {"previous_listening": listening, "readyz_answered": waited, "join_started": started}
    assert joins["master2"]["finished"] <= joins["master3"]["time"] + CLOCK_SKEW, "master3 joined before master2"
    e2e.timings.notes["join_order"] = order

    for node in ("master2", "master3"):
        sums = lab.ssh_ok(node, "sudo", "sha256sum", *(f"/etc/kubernetes/pki/{name}" for name in CA_FILES))
        on_node = {line.split()[1].removeprefix("/etc/kubernetes/pki/"): line.split()[0] for line in sums.splitlines()}
        on_host = {name: hashlib.sha256((lab.pki_dir / name).read_bytes()).hexdigest() for name in CA_FILES}
        assert on_node == on_host, f"{node}'s CA files differ from the host's"
        assert joins[node]["pki"]["ca.crt"] == on_host["ca.crt"], "the CA was not in place when kubeadm join ran"


# --- 6. serial consoles -------------------------------------------------------------------


def test_6_every_console_ends_with_ready(e2e: E2E) -> None:
    phases = {node: e2e.lab.phases(node) for node in e2e.lab.plan.node_names}
    assert all(p and p[-1] == "ready" and not any(x.startswith("failed") for x in p) for p in phases.values()), phases
    e2e.timings.notes["console_phases"] = phases


# --- 7. seed media gone once ready ---------------------------------------------------------


def seed_media(e2e: E2E) -> list[str]:
    """Every trace of the lab's seeds in libvirt: disks in the live and persistent domain XML, pool volumes."""
    conn = libvirt.open(e2e.daemon.uri)
    try:
        found = []
        for node in e2e.lab.plan.nodes:
            domain = conn.lookupByName(node.domain_name)
            for flags, which in ((0, "live"), (libvirt.VIR_DOMAIN_XML_INACTIVE, "persistent")):
                for disk in ET.fromstring(domain.XMLDesc(flags)).findall("devices/disk"):
                    source = disk.find("source")
                    name = "" if source is None else source.get("volume") or source.get("file") or ""
                    if name.endswith("-seed.iso"):
                        found.append(f"{which} disk {name} of {node.name}")
        pool = conn.storagePoolLookupByName("labctl")
        pool.refresh(0)
        found += [f"volume {v.name()}" for v in pool.listAllVolumes() if v.name().endswith("-seed.iso")]
        return found
    finally:
        conn.close()


def cidata_visible(e2e: E2E) -> dict[str, str]:
    """Nodes that still see a block device labelled cidata (the NoCloud seed), with what they see."""
    seen = e2e.lab.each_node(lambda node: e2e.lab.ssh_ok(node, "sh", "-c", "blkid -L cidata || true").strip())
    return {node: what for node, what in seen.items() if what}


def test_7_seed_media_are_gone_once_ready_and_up_does_not_bring_them_back(e2e: E2E) -> None:
    assert seed_media(e2e) == []
    deadline = time.monotonic() + 60  # a live unplug completes when the guest has released the disk
    while (seen := cidata_visible(e2e)) and time.monotonic() < deadline:
        time.sleep(5)
    assert seen == {}, f"nodes still see their seed: {seen}"
    with e2e.timings.measure("labctl up on the ready lab"):
        again = e2e.lab.labctl("up", "--timeout", "120", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.splitlines()[-1] == f"lab {LAB}: {len(MAIN_NODES)} nodes ready (nothing changed)", again.stderr
    assert seed_media(e2e) == []


# --- 8. ssh-config -------------------------------------------------------------------------


def test_8_ssh_config_blocks_work_with_plain_openssh(e2e: E2E) -> None:
    lab = e2e.lab
    printed = lab.labctl("ssh-config", timeout=60)
    assert printed.returncode == 0, printed.stderr
    config = e2e.work / "ssh_config"
    config.write_text(printed.stdout)

    def login(node: str) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", f"{LAB}-{node}", "hostname"]
        return e2e.daemon.run_in_netns(argv, timeout=120, check=False)

    done = lab.each_node(login)
    wrong = {node: (d.returncode, d.stdout.strip(), d.stderr[-300:]) for node, d in done.items()
             if d.returncode != 0 or d.stdout.strip() != node}
    assert wrong == {}, wrong


# --- 9. stop, start -------------------------------------------------------------------------


def addresses(e2e: E2E) -> dict[str, dict[str, list[str]]]:
    """Each node's IPv4 addresses by MAC, seen from inside over labctl ssh."""
    def look(node: str) -> dict[str, list[str]]:
        links = json.loads(e2e.lab.ssh_ok(node, "ip", "-j", "addr", "show"))  # -4 would drop the MACs
        return {link["address"]: sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                                        if a.get("family") == "inet")
                for link in links if link.get("address") and link["ifname"] != "lo"}

    return e2e.lab.each_node(look)


def test_9_stop_then_start_brings_the_lab_back_to_ready_with_the_same_addresses(e2e: E2E) -> None:
    lab = e2e.lab
    planned = {node.name: {nic.mac: str(nic.address) for nic in node.nics} for node in lab.plan.nodes}

    def off_plan(seen: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        """Planned addresses not found on the NIC with the planned MAC (lb1 may hold the VIP as well)."""
        wrong = {node: {mac: seen[node].get(mac, []) for mac, address in nics.items()
                        if address not in seen[node].get(mac, [])} for node, nics in planned.items()}
        return {node: macs for node, macs in wrong.items() if macs}

    assert off_plan(addresses(e2e)) == {}
    with e2e.timings.measure(f"labctl stop ({len(MAIN_NODES)} nodes)"):
        stopped = lab.labctl("stop", timeout=900)
    assert stopped.returncode == 0, stopped.stderr
    status = lab.labctl("status", "--output", "json", timeout=120)
    assert [(r["name"], r["state"]) for r in json.loads(status.stdout)] == [(n, "shut off") for n in MAIN_NODES]
    argv = [sys.executable, "-m", "labctl", "start", "--timeout", str(SMALL_UP_TIMEOUT)]
    with e2e.timings.measure(f"labctl start: {len(MAIN_NODES)} nodes back to ready"):
        code, lines = lab.up(SMALL_UP_TIMEOUT, e2e.work / "start.log", argv=argv)
    e2e.timings.notes["start_phases"] = phase_timeline(lines, MAIN_NODES)
    assert code == 0, failure_report(lab, lines)
    last = {node: phases[-1][1] if phases else None for node, phases in e2e.timings.notes["start_phases"].items()}
    assert last == dict.fromkeys(MAIN_NODES, "ready")
    assert off_plan(addresses(e2e)) == {}
    assert seed_media(e2e) == []  # a restarted domain boots from its persistent definition: no seed
    # The apiservers came back at boot (as kubelet's static pods would), and HAProxy sees them.
    wait_for_states(e2e, {f"master{i}": "UP" for i in (1, 2, 3)})


# --- 10. a remote hypervisor: phases over ssh ------------------------------------------------


def test_10_through_a_remote_uri_start_reads_the_phase_of_this_boot_over_ssh(e2e: E2E) -> None:
    """``--connect qemu+tcp://…`` is a remote hypervisor to labctl: no console log to read, so it waits
    on the phase each node recorded during this boot, over ssh through the gateway (inside the namespace)."""
    lab = e2e.lab
    stopped = lab.labctl("stop", "worker1", timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    argv = ["ip", "netns", "exec", lab.netns, sys.executable, "-m", "labctl", "--connect", e2e.daemon.tcp_uri,
            "start", "worker1", "--timeout", str(SMALL_UP_TIMEOUT)]
    with e2e.timings.measure("labctl start worker1 through a remote URI"):
        code, lines = lab.up(SMALL_UP_TIMEOUT, e2e.work / "start-remote.log", argv=argv)
    output = [line for _, line in lines]
    assert code == 0, "\n".join(output[-40:])
    assert "start worker1: started" in output and "worker1: ready" in output, output
    assert output.index("worker1: booting") < output.index("worker1: ready"), output
    assert lab.ssh_ok("worker1", "cat", "/run/labctl/phase") == "ready\n"


# --- 11. pinned host keys --------------------------------------------------------------------


def test_11_ssh_pins_host_keys_and_refuses_a_changed_one(e2e: E2E) -> None:
    lab = e2e.lab
    began = time.monotonic()
    assert lab.ssh_ok("master1", "hostname").strip() == "master1"
    e2e.timings.notes["ssh_roundtrip_s"] = round(time.monotonic() - began, 1)
    pinned = (lab.pki_dir / "hostkeys" / "master1.pub").read_text().split()[:2]
    served = lab.ssh_ok("master1", "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
    assert served == pinned, "master1 serves a host key other than the one labctl pinned"
    known = (lab.state_dir / "known_hosts").read_text()
    assert " ".join(pinned) in known
    # Last use of master1 in this lab: give it a new host key (check 12 only destroys the lab).
    lab.ssh_ok("master1", "sudo", "sh", "-c",
               "rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub && "
               "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh")
    refused = lab.ssh("master1", "hostname", timeout=60)
    assert refused.returncode != 0 and "master1" not in refused.stdout, refused
    assert "host key" in refused.stderr.lower() or "identification has changed" in refused.stderr.lower(), \
        refused.stderr[-1000:]


# --- 12. status, destroy, up again -----------------------------------------------------------


def lab_objects(e2e: E2E, lab_name: str, lab_id: str) -> list[str]:
    """Every domain and network tagged with ``lab_name``, and every volume named with ``lab_id``."""
    def ours(xml: str) -> bool:
        tag = read_tag(xml)
        return tag is not None and tag.lab == lab_name

    conn = libvirt.open(e2e.daemon.uri)
    try:
        found = [f"domain {d.name()}" for d in conn.listAllDomains() if ours(d.XMLDesc(0))]
        found += [f"network {n.name()}" for n in conn.listAllNetworks() if ours(n.XMLDesc(0))]
        pool = conn.storagePoolLookupByName("labctl")
        pool.refresh(0)
        found += [f"volume {v.name()}" for v in pool.listAllVolumes() if lab_id in v.name()]
        return found
    finally:
        conn.close()


def test_12_status_then_destroy_leaves_nothing_and_a_second_up_boots(e2e: E2E) -> None:
    lab = e2e.lab
    status = lab.labctl("status", "--output", "json", timeout=120)
    assert status.returncode == 0, status.stderr
    assert [(r["name"], r["state"]) for r in json.loads(status.stdout)] == [(n, "running") for n in MAIN_NODES]
    lab_id = json.loads((lab.state_dir / "lab.json").read_text())["id"]
    assert lab_objects(e2e, LAB, lab_id), "the lab's objects should be there before destroy"
    with e2e.timings.measure(f"labctl destroy ({len(MAIN_NODES)} nodes)"):
        gone = lab.labctl("destroy", "--yes", timeout=300)
    assert gone.returncode == 0, gone.stderr
    assert lab_objects(e2e, LAB, lab_id) == []
    left = sorted(p.name for p in lab.state_dir.iterdir()) if lab.state_dir.exists() else []
    assert left in ([], ["lock"]), f"destroy left {left} in the lab's state dir"

    # The second lab is the other topology: one master on an external etcd of three members (checks 12b-12g),
    # then grown by a worker (check 13), which destroys it.
    small = lab_for(e2e.daemon, e2e.work, LAB, small_lab_text(e2e, workers=0))
    with e2e.timings.measure(f"labctl up again, external etcd: {len(SMALL_NODES)} nodes to ready"):
        code, lines = small.up(SMALL_UP_TIMEOUT, e2e.work / "up-again.log")
    e2e.timings.notes["up_again_phases"] = phase_timeline(lines, SMALL_NODES)
    e2e.facts["small"] = small
    assert code == 0, failure_report(small, lines)
    assert small.ssh_ok("master1", "hostname").strip() == "master1"


def small_lab_text(e2e: E2E, workers: int) -> str:
    return lab_text(LAB, e2e.image_entry, masters=1, workers=workers, cni=e2e.cni, etcd=3)


def small_lab(e2e: E2E) -> Lab:
    if "small" not in e2e.facts:
        pytest.fail("the second lab was not made (check 12 failed before `labctl up`)")
    return e2e.facts["small"]


# --- 12b-12g. external etcd: real etcd 3.5 on etcd1..3, labctl etcd, the member drill, a restore -----------


def test_12b_kubeadm_init_config_names_the_etcd_members_and_the_hosts_files(e2e: E2E) -> None:
    e2e.timings.notes["etcd_init_config"] = etcd_checks.check_init_config(small_lab(e2e))


def test_12c_every_etcd_member_is_healthy_from_master1_with_the_apiserver_certificate(e2e: E2E) -> None:
    etcd_checks.check_cluster_health(small_lab(e2e))


def test_12d_labctl_etcd_status_shows_every_member_and_one_leader(e2e: E2E) -> None:
    e2e.timings.notes["etcd_status"] = etcd_checks.check_status(small_lab(e2e))


def test_12e_labctl_etcd_snapshot_save_gives_a_verified_file(e2e: E2E) -> None:
    e2e.timings.notes["etcd_snapshot"] = etcd_checks.check_snapshot_save(small_lab(e2e), e2e.work)


def test_12f_the_etcd_member_drill_holds_with_one_down_and_loses_quorum_with_two(e2e: E2E) -> None:
    e2e.timings.notes["etcd_member_drill"] = etcd_checks.check_member_drill(small_lab(e2e))


def test_12g_a_restore_brings_back_the_key_before_the_snapshot_and_not_the_one_after(e2e: E2E) -> None:
    e2e.timings.notes["etcd_restore"] = etcd_checks.check_restore(small_lab(e2e), e2e.work)


# --- 13. a running lab grows by a worker ----------------------------------------------------------


def test_13_a_worker_added_to_lab_yaml_joins_the_running_lab_with_a_fresh_token(e2e: E2E) -> None:
    small = small_lab(e2e)
    try:
        haproxy_before = small.ssh_ok("lb1", "sudo", "sha256sum", "/etc/haproxy/haproxy.cfg")
        first_token = (small.pki_dir / "token").read_text().strip()
        expired = time.time() - 2 * 86400  # as if the lab had been up for two days: kubeadm's token is gone
        os.utime(small.pki_dir / "token", (expired, expired))
        grown = lab_for(e2e.daemon, e2e.work, LAB, small_lab_text(e2e, workers=1))
        # `up` tells the running lab over ssh: run it inside the namespace, as everything that reaches a VM.
        argv = ["ip", "netns", "exec", grown.netns, sys.executable, "-m", "labctl", "up",
                "--timeout", str(SMALL_UP_TIMEOUT)]
        with e2e.timings.measure("labctl up: the running lab grows by worker1"):
            code, lines = grown.up(SMALL_UP_TIMEOUT, e2e.work / "up-grown.log", argv=argv)
        output = [line for _, line in lines]
        assert code == 0, failure_report(grown, lines)
        assert "node worker1: created" in output and "master1: bootstrap token registered for the new nodes" in output
        # A worker changes no HAProxy backend: the load balancer is waited for, never refreshed.
        assert "gateway: lab DNS knows the new nodes" in output, output
        assert not [line for line in output if "HAProxy" in line], output
        token = (grown.pki_dir / "token").read_text().strip()
        assert token != first_token
        [created] = [c for c in calls_of(grown, "master1", "kubeadm", "token") if "create" in c["argv"]]
        assert created["token"] == token and created["exit"] == 0, created
        [join] = calls_of(grown, "worker1", "kubeadm", "join")
        discovery = config_docs(join)["JoinConfiguration"]["discovery"]["bootstrapToken"]
        assert discovery["token"] == token and join["exit"] == 0, join
        assert discovery["caCertHashes"] == [ca_cert_hash((grown.pki_dir / "ca.crt").read_text())]
        worker = grown.plan.node("worker1")
        # From every other node (worker1's own name is answered by its /etc/hosts, not by DNS).
        seen = grown.each_node(lambda node: grown.ssh_ok(node, "getent", "hosts", worker.fqdn) if node != "worker1"
                               else str(worker.internal.address.ip))
        assert {node: text.split()[0] for node, text in seen.items()} == dict.fromkeys(
            grown.plan.node_names, str(worker.internal.address.ip)), seen
        assert small.ssh_ok("lb1", "sudo", "sha256sum", "/etc/haproxy/haproxy.cfg") == haproxy_before
        assert json.loads((grown.state_dir / "lab.json").read_text())["refresh"] == []
    finally:
        small.labctl("destroy", "--yes", timeout=300)
