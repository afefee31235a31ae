"""labctl doctor: each check against faked host facts, and fact gathering with injected probes."""

import json
from dataclasses import replace
from ipaddress import IPv4Network

import pytest

from labctl.backends.base import ForeignNetwork, HypervisorFacts, Tool
from labctl.backends.libvirt.xml import bridge_device
from labctl.errors import BackendError, LabError
from labctl.image.cache import ImageCache
from labctl.lab.accel import HostFacts
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from labctl.ops.doctor import (
    FAIL,
    OK,
    WARN,
    Check,
    Facts,
    Route,
    blocking_failures,
    check_accel,
    check_bridge,
    check_disk,
    check_memory,
    check_other_labs,
    check_subnets,
    free_cidr,
    parse_addresses,
    parse_meminfo,
    parse_routes,
    refuse_if_blocked,
    run_checks,
)
from labctl.ops.preflight import Probes, gather_facts, image_check

PVM_ONLY = HostFacts(kvm_device=True, modules=frozenset({"kvm", "kvm_pvm"}))
KVM = HostFacts(kvm_device=True, modules=frozenset({"kvm", "kvm_intel"}))
GIB = 1 << 30



def only(checks):
    (check,) = checks
    return check


# --- accelerator ------------------------------------------------------------------------------------


def test_pvm_only_host_warns_about_tcg_and_its_cost():
    check = check_accel("auto", PVM_ONLY)
    assert check.status == WARN
    assert "TCG" in check.message and "PVM-only" in check.message and "30-60 minutes" in check.message
    assert "kvm_intel or kvm_amd" in check.fix and "accel: tcg" in check.fix


def test_kvm_requested_on_a_pvm_only_host_fails():
    check = check_accel("kvm", PVM_ONLY)
    assert check.status == FAIL and "kvm requested" in check.message


def test_usable_kvm_and_requested_tcg_are_ok():
    assert check_accel("auto", KVM).status == OK
    check = check_accel("tcg", KVM)
    assert check.status == OK and "30-60 minutes" in check.message


VBOX_NO_VTX = HostFacts(kvm_device=False, modules=frozenset(), emulation=False, hardware=False)
VBOX_VTX = HostFacts(kvm_device=False, modules=frozenset(), emulation=False, hardware=True)


def test_a_hypervisor_without_emulation_never_gets_tcg():
    """VirtualBox: hardware virtualization or a refusal (auto), a warning where kvm insists."""
    assert check_accel("auto", VBOX_VTX).status == OK
    refused = check_accel("auto", VBOX_NO_VTX)
    assert refused.status == FAIL and "no hardware virtualization (VT-x/AMD-V)" in refused.message
    assert "enable VT-x/AMD-V" in refused.fix and "accel: tcg" not in refused.fix
    insisted = check_accel("kvm", VBOX_NO_VTX)
    assert insisted.status == WARN and "nodes may fail to start" in insisted.message
    assert check_accel("tcg", VBOX_VTX).status == FAIL


# --- subnets ----------------------------------------------------------------------------------------

IP_ROUTE = json.dumps([
    {"dst": "default", "gateway": "192.168.1.1", "dev": "wlan0"},
    {"dst": "192.168.1.0/24", "dev": "wlan0", "scope": "link"},
    {"dst": "10.213.51.0/24", "dev": "docker0", "scope": "link"},
    {"dst": "10.0.0.0/8", "gateway": "10.8.0.1", "dev": "tun0"},
    {"dst": "172.17.0.5", "dev": "veth1"},
    {"type": "blackhole", "dst": "10.99.0.0/16"},
])
IP_ADDR = json.dumps([
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
                                   {"family": "inet6", "local": "::1", "prefixlen": 128}]},
    {"ifname": "wlan0", "addr_info": [{"family": "inet", "local": "192.168.1.23", "prefixlen": 24}]},
    {"ifname": "eth1", "addr_info": []},
])


def test_parse_ip_json():
    routes = parse_routes(IP_ROUTE)
    assert Route(IPv4Network("10.213.51.0/24"), "docker0") in routes
    assert Route(IPv4Network("172.17.0.5/32"), "veth1") in routes
    assert Route(IPv4Network("10.99.0.0/16"), "") in routes
    assert not any(route.network.prefixlen == 0 for route in routes)  # the default route overlaps everything
    assert parse_addresses(IP_ADDR) == [Route(IPv4Network("127.0.0.0/8"), "lo", "address"),
                                        Route(IPv4Network("192.168.1.0/24"), "wlan0", "address")]
    assert parse_routes("not json") == [] and parse_routes("") == []


def test_an_overlapping_route_fails_naming_the_cidr_and_the_interface(plan):
    assert str(plan.network("internal").cidr) == "10.213.51.0/24"
    checks = check_subnets(plan, parse_routes(IP_ROUTE))
    failed = [check for check in checks if check.status == FAIL]
    check = only(failed)
    assert "internal network 10.213.51.0/24 overlaps 10.213.51.0/24 on docker0" in check.message
    assert "networks.internal.cidr" in check.fix
    suggested = IPv4Network(check.fix.rsplit("e.g. ", 1)[1])  # the VPN's 10/8 leaves 172.16/12
    assert suggested == IPv4Network("172.16.0.0/24")
    assert not any(suggested.overlaps(route.network) for route in parse_routes(IP_ROUTE))


def test_a_wider_route_only_warns(plan):
    """A VPN's 10.0.0.0/8: the lab's narrower route wins on the host."""
    checks = check_subnets(plan, [Route(IPv4Network("10.0.0.0/8"), "tun0")])
    assert {check.status for check in checks} == {WARN}
    assert any("overlaps 10.0.0.0/8 on tun0" in check.message for check in checks)


def test_the_labs_own_bridges_do_not_count(plan, bridged):
    devices = {bridge_device("k8s", net) for net in plan.networks}
    own = [Route(net.cidr, bridge_device("k8s", net)) for net in plan.networks]
    assert only(check_subnets(plan, own, own=devices)).status == OK
    assert {check.status for check in check_subnets(plan, own)} == {FAIL}
    # Bridge mode: the internal range is the LAN on the user's bridge, which is expected.
    lan = {bridge_device("k8s", net) for net in bridged.networks}
    assert "br0" in lan
    assert only(check_subnets(bridged, [Route(IPv4Network("192.168.1.0/24"), "br0", "address")], own=lan)).status == OK
    assert only(check_subnets(bridged, [Route(IPv4Network("192.168.1.0/24"), "eth0")], own=lan)).status == FAIL


def test_remote_routes_are_not_checked(plan):
    assert only(check_subnets(plan, None, local=False)).status == WARN


def test_free_cidr_avoids_what_is_taken():
    taken = [IPv4Network("10.0.0.0/24"), IPv4Network("10.0.2.0/23"), IPv4Network("10.0.1.128/25")]
    assert free_cidr(taken) == IPv4Network("10.0.4.0/24")
    assert free_cidr([IPv4Network("10.0.0.0/8")], 20) == IPv4Network("172.16.0.0/20")
    assert free_cidr([IPv4Network("0.0.0.0/1"), IPv4Network("128.0.0.0/1")]) is None


# --- memory and disk --------------------------------------------------------------------------------


def test_low_memory_fails_with_the_numbers(plan):
    assert sum(node.memory for node in plan.nodes) == 11264
    check = check_memory(plan, 4096)
    assert check.status == FAIL
    assert check.message == "4.0 GiB available, 7 nodes to start need 11.0 GiB"
    assert "memory" in check.fix


def test_memory_between_half_and_all_warns_and_enough_is_ok(plan):
    assert check_memory(plan, 8192).status == WARN
    assert check_memory(plan, 16384).status == OK


def test_parse_meminfo():
    assert parse_meminfo("MemTotal:       32768000 kB\nMemFree: 1 kB\nMemAvailable:   20971520 kB\n") == 20480
    assert parse_meminfo("MemTotal: 1 kB\n") is None


def test_running_nodes_need_no_more_memory(plan):
    running = {"gateway", "lb1", "master1", "master2", "master3"}
    check = check_memory(plan, 4096, running)
    assert check.status == OK and "2 nodes to start need 4.0 GiB" in check.message
    assert check_memory(plan, 0, set(plan.node_names)).status == OK


def test_disk(plan):
    assert check_disk(plan, 200 * GIB).status == OK
    assert check_disk(plan, 40 * GIB).status == WARN  # thin disks: enough for what nodes write, not their size
    check = check_disk(plan, 10 * GIB)
    assert check.status == FAIL and "10.0 GiB free" in check.message and "at least 24 GiB" in check.message
    assert check_disk(plan, None).status == WARN


# --- bridge and other labs --------------------------------------------------------------------------


def test_missing_bridge_in_bridge_mode_fails(bridged, plan):
    check = check_bridge(bridged, frozenset({"virbr0", "docker0"}))
    assert check is not None and check.status == FAIL and "br0" in check.message
    assert check_bridge(bridged, frozenset({"br0"})).status == OK
    assert check_bridge(plan, frozenset()) is None  # isolated mode needs no host bridge


def test_other_labs_networks_on_our_ranges_and_name_clashes_fail(plan):
    nat = plan.network("nat").cidr
    networks = [ForeignNetwork("k8s-nat", "k8s", (nat,)),  # ours
                ForeignNetwork("dev-nat", "dev", (nat,)),
                ForeignNetwork("default", None, (IPv4Network("192.168.122.0/24"),))]
    checks = check_other_labs(plan, networks, ["domain k8s-master1"])
    assert [check.status for check in checks] == [FAIL, FAIL]
    assert checks[0].message == "domain k8s-master1 exists but is not part of lab k8s"
    assert f"nat network {nat} overlaps {nat} of lab dev's network dev-nat" == checks[1].message
    assert "labctl --name dev destroy" in checks[1].fix
    assert only(check_other_labs(plan, networks[:1] + networks[2:], [])).status == OK


# --- the whole run ----------------------------------------------------------------------------------


def test_blocking_failures_are_the_fails_and_up_refuses_with_them(plan):
    qemu_img = Tool("qemu-img", True, "libvirt makes the nodes' copy-on-write disks with it", "install qemu-utils")
    hypervisor = HypervisorFacts("qemu:///system", True, accel=PVM_ONLY, tools=(qemu_img,), disk_free=500 * GIB,
                                 networks=())
    facts = Facts("libvirt", "qemu:///system", True, hypervisor, mem_available_mib=2048, routes=(),
                  bridges=frozenset(), image=Check("image", OK, "cached"))
    checks = run_checks(plan, facts)
    assert [check.name for check in checks] == ["libvirt", "accelerator", "qemu-img", "memory", "disk", "subnets",
                                                "other labs", "image", "seed tooling"]
    assert [check.name for check in blocking_failures(checks)] == ["memory"]
    assert checks[0].line() == "OK    libvirt: connected to qemu:///system"
    assert checks[3].line().startswith("FAIL  memory: 2.0 GiB available") and "(fix: " in checks[3].line()
    with pytest.raises(LabError, match=r"host not ready: memory: 2\.0 GiB available"):
        refuse_if_blocked(checks)
    refuse_if_blocked([check for check in checks if check.status != FAIL])


def test_virtualbox_facts_memory_bridges_and_a_driver_up_can_do_without(tmp_path):
    """A hypervisor that reports memory and bridgeable interfaces itself, and a tool `up` does not need."""
    plan = plan_lab(parse_lab("backend: virtualbox\naccel: kvm\nnetworks: {internal: {mode: bridge, bridge: en0}}\n"
                              "nodes: {master: {count: 1}, worker: {count: 0}}", "t"))
    driver = Tool("vboxdrv", False, "VirtualBox's kernel driver", "sudo /sbin/vboxconfig", required=False)
    hypervisor = HypervisorFacts("VirtualBox 7.2.22", True, accel=VBOX_NO_VTX, tools=(driver,),
                                 mem_available_mib=16384, disk_free=500 * GIB, networks=(),
                                 bridges=frozenset({"en0", "en1"}))
    facts = Facts("virtualbox", "VirtualBox 7.2.22", True, hypervisor, mem_available_mib=1, routes=(),
                  bridges=frozenset(), image=Check("image", OK, "cached"))
    checks = {check.name: check for check in run_checks(plan, facts)}
    assert checks["memory"].status == OK  # the hypervisor's figure, not the host's 1 MiB
    assert checks["bridge"].line() == "OK    bridge: host interface en0 can be bridged onto"
    assert checks["vboxdrv"].status == WARN and checks["accelerator"].status == WARN
    assert blocking_failures(list(checks.values())) == []
    missing = run_checks(plan, replace(facts, hypervisor=replace(hypervisor, bridges=frozenset({"eth0"}))))
    (failed,) = blocking_failures(missing)
    assert failed.name == "bridge" and "offers: eth0" in failed.message
    with pytest.raises(LabError, match=r"host not ready: bridge: no host interface named en0 .* \(fix: name one"):
        refuse_if_blocked(missing)


def fake_probes(**overrides):
    outputs = {("ip", "-j", "route"): IP_ROUTE, ("ip", "-j", "addr"): IP_ADDR,
               ("ip", "-j", "link", "show", "type", "bridge"): json.dumps([{"ifname": "virbr0"}])}
    defaults = {"run": lambda argv: outputs[tuple(argv)],
                "read_text": lambda path: "MemTotal: 16000000 kB\nMemAvailable:    3145728 kB\n",
                "importable": lambda name: True,
                "host_facts": lambda: PVM_ONLY}
    return Probes(**{**defaults, **overrides})


def unreachable():
    raise BackendError("cannot connect to libvirt at test:///default: no socket", "is libvirtd running?")


def test_gather_without_libvirt(plan, tmp_path):
    facts = gather_facts(plan, "libvirt", "test:///default", unreachable, local=True, probes=fake_probes(),
                         cache=ImageCache(tmp_path))
    assert facts.hypervisor is None
    assert facts.connect_error == "cannot connect to libvirt at test:///default: no socket"
    assert facts.connect_fix == "is libvirtd running?"
    assert facts.mem_available_mib == 3072 and facts.host_accel == PVM_ONLY
    assert facts.routes is not None and Route(IPv4Network("10.213.51.0/24"), "docker0") in facts.routes
    assert facts.bridges == frozenset({"virbr0"})
    checks = run_checks(plan, facts)
    assert {check.name for check in blocking_failures(checks)} == {"libvirt", "memory", "subnets"}
    assert next(check for check in checks if check.name == "accelerator").status == WARN  # TCG on PVM-only


def test_remote_hypervisor_facts_come_from_the_backend(plan, tmp_path):
    remote = HypervisorFacts("qemu+ssh://far/system", False, accel=KVM, mem_available_mib=65536,
                             tools=(Tool("qemu-img", None, "disks", "install qemu-utils"),), networks=())
    facts = gather_facts(plan, "libvirt", "qemu+ssh://far/system", lambda: FactsOnly(remote), local=False,
                         probes=fake_probes(), cache=ImageCache(tmp_path))
    assert facts.routes is None and facts.mem_available_mib is None and facts.host_accel is None
    checks = {check.name: check for check in run_checks(plan, facts)}
    assert checks["libvirt"].line() == "OK    libvirt: connected to qemu+ssh://far/system"
    assert checks["memory"].status == OK and checks["accelerator"].status == OK
    assert checks["qemu-img"].status == WARN and "remote hypervisor" in checks["qemu-img"].message
    assert checks["subnets"].status == WARN


class FactsOnly:
    """A connected backend as far as gather_facts looks: its facts."""

    def __init__(self, facts):
        self.facts = facts

    def doctor_facts(self, plan):
        return self.facts


def test_gather_when_ip_is_missing(plan, tmp_path):
    def no_ip(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    probes = fake_probes(run=no_ip)
    facts = gather_facts(plan, "libvirt", "test:///default", unreachable, local=True, probes=probes,
                         cache=ImageCache(tmp_path))
    assert facts.routes is None
    assert only(check_subnets(plan, facts.routes, facts.local)).status == WARN


def test_image_check(plan, tmp_path):
    cache = ImageCache(tmp_path / "cache")
    ok = image_check(plan.lab, cache, None)
    assert ok.status == OK and "not cached" in ok.message and "cloud.debian.org" in ok.message
    bad = image_check(plan.lab, cache, lambda url: "connection refused")
    assert bad.status == FAIL and "unreachable: connection refused" in bad.message
    local = tmp_path / "disk.qcow2"
    local.write_bytes(b"QFI\xfb")
    lab = parse_lab(f"image: {{path: {local}}}", "t")
    assert image_check(lab, cache, None).status == OK
    local.unlink()  # gone since lab.yaml was read
    assert image_check(lab, cache, None).status == FAIL
