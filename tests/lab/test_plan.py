"""The plan: names, addresses and MACs, deterministic and unique."""

from ipaddress import IPv4Address

from labctl.lab.config import load_lab, parse_lab
from labctl.lab.plan import derive_mac, plan_lab


def test_default_plan_nodes_names_and_addresses():
    plan = plan_lab(load_lab())
    assert plan.node_names == ("gateway", "lb1", "master1", "master2", "master3", "worker1", "worker2")
    internal = plan.lab.internal.cidr.network_address
    assert {n.name: n.internal.address.ip for n in plan.nodes} == {
        "gateway": internal + 1, "lb1": internal + 11, "master1": internal + 21, "master2": internal + 22,
        "master3": internal + 23, "worker1": internal + 31, "worker2": internal + 32,
    }
    assert plan.node("master2").domain_name == "k8s-master2"
    assert plan.node("master2").fqdn == "master2.k8s.internal"
    assert plan.api_name == "api.k8s.internal" and plan.api_address == internal + 11
    assert plan.gateway_address == internal + 1
    gateway = plan.node("gateway")
    assert [nic.network for nic in gateway.nics] == ["nat", "internal"]
    assert gateway.nics[0].address.ip == plan.lab.nat.cidr.network_address + 2


def test_networks_plan():
    plan = plan_lab(load_lab())
    nat, internal = plan.networks
    assert (nat.name, nat.mode, internal.name, internal.mode) == ("k8s-nat", "nat", "k8s-internal", "isolated")
    assert nat.host_bridge is None and internal.host_bridge is None
    assert internal.host_address.ip == plan.lab.internal.cidr.network_address + 254
    assert nat.host_address.ip == plan.lab.nat.cidr.network_address + 1


def test_two_load_balancers_use_a_vip():
    plan = plan_lab(parse_lab("nodes: {lb: {count: 2}}", "t"))
    assert plan.api_address == plan.lab.internal.cidr.network_address + 10
    assert "lb2" in plan.node_names


def test_bridge_mode_has_no_host_address_and_uses_the_host_bridge():
    plan = plan_lab(parse_lab("networks: {internal: {mode: bridge, bridge: br0}}", "t"))
    internal = plan.network("internal")
    assert internal.host_address is None and internal.host_bridge == "br0"


def test_intnet_mode_has_no_host_side():
    plan = plan_lab(parse_lab("backend: virtualbox\nnetworks: {internal: {mode: intnet}}", "t"))
    internal = plan.network("internal")
    assert (internal.mode, internal.host_address, internal.host_bridge) == ("intnet", None, None)
    assert plan.network("nat").host_address.ip == plan.lab.nat.cidr.network_address + 1  # VirtualBox's NAT gateway


def test_plan_is_deterministic_and_macs_unique():
    first, second = plan_lab(load_lab()), plan_lab(load_lab())
    assert first == second
    big = plan_lab(parse_lab("nodes: {master: {count: 7}, worker: {count: 50}, lb: {count: 2}}", "t"))
    macs = [nic.mac for node in big.nodes for nic in node.nics]
    addresses = [nic.address for node in big.nodes for nic in node.nics]
    assert len(set(macs)) == len(macs) and len(set(addresses)) == len(addresses)
    assert all(mac.startswith("52:54:00:") for mac in macs)
    assert len({node.uuid for node in big.nodes}) == len(big.nodes)


def test_mac_depends_on_lab_node_and_network():
    assert derive_mac("k8s", "master1", "internal") == derive_mac("k8s", "master1", "internal")
    assert derive_mac("k8s", "master1", "internal") != derive_mac("k9s", "master1", "internal")
    assert derive_mac("k8s", "master1", "internal") != derive_mac("k8s", "master1", "nat")


def test_other_lab_does_not_collide():
    a, b = plan_lab(load_lab()), plan_lab(load_lab(name="dev"))
    assert not a.lab.internal.cidr.overlaps(b.lab.internal.cidr)
    assert {n.domain_name for n in a.nodes}.isdisjoint(n.domain_name for n in b.nodes)
    assert isinstance(a.api_address, IPv4Address)
