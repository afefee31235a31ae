"""What `labctl doctor` learns from libvirt, through libvirt's in-process test driver (no daemon, no network)."""

from ipaddress import IPv4Network

import libvirt

from labctl.backends.base import ForeignNetwork
from labctl.backends.libvirt.backend import LibvirtBackend
from labctl.backends.libvirt.facts import parse_libvirt_network, socket_fix
from labctl.backends.libvirt.xml import bridge_device, network_xml
from labctl.lab.config import parse_lab
from labctl.lab.identity import Tag
from labctl.lab.plan import plan_lab
from labctl.ops.doctor import check_other_labs


def test_parse_libvirt_network_reads_tag_and_range(plan):
    net = plan.network("internal")
    parsed = parse_libvirt_network(network_xml(net, Tag("k8s", "abc", "network")), net.name)
    assert parsed == ForeignNetwork("k8s-internal", "k8s", (net.cidr,))
    bare = "<network><name>default</name><ip address='192.168.122.1' netmask='255.255.255.0'/></network>"
    assert parse_libvirt_network(bare, "default") == ForeignNetwork("default", None, (IPv4Network("192.168.122.0/24"),))


def test_doctor_facts_find_clashes_states_and_space(plan, tmp_path):
    conn = libvirt.open("test:///default")
    conn.networkDefineXML(network_xml(plan.network("internal"), Tag("k8s", "abc", "network")))
    other = plan_lab(parse_lab(f"name: dev\nnetworks: {{nat: {{cidr: {plan.network('nat').cidr}}}}}", "t"))
    conn.networkDefineXML(network_xml(other.network("nat"), Tag("dev", "def", "network")))
    conn.defineXML("<domain type='test'><name>k8s-master1</name><memory>1024</memory>"
                   "<os><type>hvm</type></os></domain>")
    backend = LibvirtBackend(conn, pool_dir=str(tmp_path / "pool"))
    facts = backend.doctor_facts(plan)
    assert facts.error is None and facts.target == "test:///default" and facts.local
    assert facts.defined == {"master1"} and facts.running == frozenset()
    assert facts.foreign == ("domain k8s-master1",)
    assert facts.disk_free is not None and facts.disk_free > 0
    assert [tool.name for tool in facts.tools] == ["qemu-img"]
    assert facts.own_devices == {bridge_device("k8s", net) for net in plan.networks}
    messages = [check.message for check in check_other_labs(plan, facts.networks, facts.foreign)]
    assert messages[0] == "domain k8s-master1 exists but is not part of lab k8s"
    assert any("of lab dev's network dev-nat" in message for message in messages)
    assert not any("k8s-internal" in message for message in messages)  # our own network


def test_socket_fix_names_the_missing_socket_or_the_group(tmp_path):
    assert socket_fix("qemu:///session") == ""
    assert "systemctl enable --now libvirtd.socket" in socket_fix("qemu:///system", [tmp_path / "missing"])
