"""Domain, network and volume XML, parsed back and checked field by field."""

import xml.etree.ElementTree as ET

import libvirt
import pytest

from labctl.backends.libvirt.xml import METADATA_NS, DomainMedia, domain_xml, network_xml, read_tag, volume_xml
from labctl.lab.accel import KVM, TCG, Accel
from labctl.lab.config import load_lab, parse_lab
from labctl.lab.identity import Tag
from labctl.lab.plan import plan_lab

NETS = {"nat": "k8s-nat", "internal": "k8s-internal"}
MEDIA = DomainMedia("labctl", "k8s-gateway-abc.qcow2", "k8s-gateway-abc-seed.iso", "/var/log/x/console.log")


def test_domain_xml_fields():
    plan = plan_lab(load_lab())
    node = plan.node("gateway")
    tag = Tag("k8s", "abc123", "domain", "gateway", "gateway")
    root = ET.fromstring(domain_xml(node, NETS, tag, Accel(TCG, "test"), MEDIA))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "k8s-gateway" and root.findtext("uuid") == node.uuid
    assert root.find("memory").get("unit") == "MiB" and int(root.findtext("memory")) == node.memory
    assert int(root.findtext("vcpu")) == node.cpus
    assert root.find("cpu") is None, "no host-passthrough under TCG"
    disks = root.findall("devices/disk")
    assert [d.find("target").get("bus") for d in disks] == ["virtio", "virtio"]
    assert [d.find("source").get("volume") for d in disks] == [MEDIA.disk_volume, MEDIA.seed_volume]
    assert disks[1].find("readonly") is not None and disks[1].find("driver").get("type") == "raw"
    nics = root.findall("devices/interface")
    assert [(n.find("mac").get("address"), n.find("source").get("network")) for n in nics] == [
        (node.nics[0].mac, "k8s-nat"), (node.nics[1].mac, "k8s-internal")]
    assert all(n.find("model").get("type") == "virtio" for n in nics)
    assert root.find("devices/serial/log").get("file") == MEDIA.console_log
    assert root.find("os/boot").get("dev") == "hd"
    assert read_tag(ET.tostring(root, encoding="unicode")) == tag


def test_domain_kvm_and_direct_kernel_boot():
    plan = plan_lab(load_lab())
    media = DomainMedia("labctl", "d.qcow2", None, "/c.log", "/p/vmlinuz", "/p/initrd", "root=/dev/vda console=ttyS0")
    root = ET.fromstring(domain_xml(plan.node("worker1"), NETS, Tag("k8s", "i", "domain"), Accel(KVM, "test"), media))
    assert root.get("type") == "kvm" and root.find("cpu").get("mode") == "host-passthrough"
    assert root.findtext("os/kernel") == "/p/vmlinuz" and root.findtext("os/initrd") == "/p/initrd"
    assert root.findtext("os/cmdline") == "root=/dev/vda console=ttyS0" and root.find("os/boot") is None
    assert len(root.findall("devices/disk")) == 1


@pytest.mark.parametrize("mode", ["isolated", "bridge"])
def test_network_xml(mode):
    text = "networks: {internal: {mode: bridge, bridge: br0}}" if mode == "bridge" else "name: k8s"
    plan = plan_lab(parse_lab(text, "t"))
    tag = Tag("k8s", "abc", "network")
    nat = ET.fromstring(network_xml(plan.network("nat"), tag))
    assert nat.findtext("name") == "k8s-nat" and nat.find("forward").get("mode") == "nat"
    assert nat.find("ip").get("address") == str(plan.network("nat").host_address.ip)
    assert nat.find("ip").get("netmask") == "255.255.255.0"
    assert nat.find(f"metadata/{{{METADATA_NS}}}lab").get("name") == "k8s"
    internal = ET.fromstring(network_xml(plan.network("internal"), tag))
    if mode == "bridge":
        assert internal.find("forward").get("mode") == "bridge"
        assert internal.find("bridge").get("name") == "br0" and internal.find("ip") is None
    else:
        assert internal.find("forward") is None, "isolated: no forwarding"
        assert internal.find("dns").get("enable") == "no"
        assert internal.find("ip").get("address") == str(plan.network("internal").host_address.ip)
    assert read_tag(ET.tostring(internal, encoding="unicode")) == tag


def test_read_tag_ignores_foreign_and_broken_xml():
    assert read_tag("<domain><name>x</name></domain>") is None
    assert read_tag("<domain><metadata><other xmlns='urn:x' name='k8s'/></metadata></domain>") is None
    assert read_tag("not xml <") is None


def test_overlay_volume_xml():
    root = ET.fromstring(volume_xml("k8s-m1-x.qcow2", 20 << 30, "qcow2", ("/pool/base.qcow2", "qcow2")))
    assert root.findtext("capacity") == str(20 << 30)
    assert root.findtext("backingStore/path") == "/pool/base.qcow2"
    assert root.find("backingStore/format").get("type") == "qcow2"


def test_xml_accepted_by_libvirt_test_driver():
    """libvirt's own parser (test:///default, in-process) accepts what we generate."""
    plan = plan_lab(load_lab())
    conn = libvirt.open("test:///default")
    try:
        for net in plan.networks:
            defined = conn.networkDefineXML(network_xml(net, Tag("k8s", "i", "network")))
            assert read_tag(defined.XMLDesc(0)).lab == "k8s"
        media = DomainMedia("default-pool", "d.qcow2", None, "/tmp/c.log")
        dom = conn.defineXML(domain_xml(plan.node("master1"), NETS, Tag("k8s", "i", "domain", "master", "master1"),
                                        Accel(TCG, "test"), media))
        assert read_tag(dom.XMLDesc(0)).node == "master1"
    finally:
        conn.close()
