"""libvirt XML for the plan's networks, domains and volumes, built with ElementTree. Pure."""

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from labctl.lab.accel import KVM, Accel
from labctl.lab.identity import Tag
from labctl.lab.plan import NetworkPlan, NodePlan
from labctl.resources import read_text

METADATA_NS = "https://labctl.dev/xmlns/lab/1"
DOMAIN_TYPES = {"kvm": "kvm", "tcg": "qemu"}  # accelerator -> <domain type=…>


def bridge_device(lab: str, net: NetworkPlan) -> str:
    """The Linux bridge a network sits on: the user's host bridge, or ours (≤ 15 chars, from the lab name)."""
    if net.host_bridge:
        return net.host_bridge
    short = hashlib.sha256(lab.encode()).hexdigest()[:8]
    return f"lc{short}-{net.key[0]}"


@dataclass(frozen=True)
class DomainMedia:
    """Where a domain's disks live and how it boots."""

    pool: str
    disk_volume: str
    seed_volume: str | None
    console_log: str
    kernel: str | None = None  # direct kernel boot, for images that carry no bootloader
    initrd: str | None = None
    cmdline: str | None = None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _metadata(tag: Tag) -> ET.Element:
    metadata = ET.Element("metadata")
    attrib = {"name": tag.lab, "id": tag.lab_id, "kind": tag.kind, "version": tag.version}
    if tag.role:
        attrib.update(role=tag.role, node=tag.node)
    # Written with its prefix declared in place (ElementTree would otherwise need a process-wide
    # namespace registration to print anything but ns0); read back namespace-aware below.
    ET.SubElement(metadata, "labctl:lab", {"xmlns:labctl": METADATA_NS, **attrib})
    return metadata


def read_tag(xml_text: str) -> Tag | None:
    """The labctl tag in a domain's or network's XML, or None when it is not ours."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return None
    element = root.find(f"metadata/{{{METADATA_NS}}}lab")
    if element is None or not element.get("name") or not element.get("id"):
        return None
    get = element.attrib.get
    return Tag(get("name", ""), get("id", ""), get("kind", ""), get("role", ""), get("node", ""), get("version", ""))


def network_xml(net: NetworkPlan, tag: Tag) -> str:
    """The libvirt network of ``net``, from the skeleton in network/ for its mode."""
    root = ET.fromstring(read_text("network", f"{net.mode}.xml"))
    name = root.find("name")
    assert name is not None  # the shipped skeletons all have one
    name.text = net.name
    uuid = ET.Element("uuid")
    uuid.text = net.uuid
    root.insert(1, uuid)
    root.insert(2, _metadata(tag))
    bridge = root.find("bridge")
    assert bridge is not None
    bridge.set("name", bridge_device(tag.lab, net))
    ip = root.find("ip")
    if ip is not None and net.host_address is not None:
        ip.set("address", str(net.host_address.ip))
        ip.set("netmask", str(net.host_address.netmask))
    return ET.tostring(root, encoding="unicode")


def domain_xml(node: NodePlan, lab_networks: dict[str, str], tag: Tag, accel: Accel, media: DomainMedia) -> str:
    """The libvirt domain of ``node``. ``lab_networks`` maps network key → libvirt network name."""
    root = ET.Element("domain", type=DOMAIN_TYPES[accel.kind])
    _sub(root, "name", node.domain_name)
    _sub(root, "uuid", node.uuid)
    _sub(root, "title", f"labctl {tag.lab} {node.name} ({node.role})")
    root.append(_metadata(tag))
    _sub(root, "memory", str(node.memory), unit="MiB")
    _sub(root, "vcpu", str(node.cpus))
    _os(root, media)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if accel.kind == KVM:
        _sub(root, "cpu", mode="host-passthrough")
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    _devices(_sub(root, "devices"), node, lab_networks, media)
    return ET.tostring(root, encoding="unicode")


def _os(root: ET.Element, media: DomainMedia) -> None:
    os_element = _sub(root, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="pc")
    if media.kernel:
        _sub(os_element, "kernel", media.kernel)
        if media.initrd:
            _sub(os_element, "initrd", media.initrd)
        if media.cmdline:
            _sub(os_element, "cmdline", media.cmdline)
    else:
        _sub(os_element, "boot", dev="hd")


def _disk(devices: ET.Element, pool: str, volume: str, fmt: str, target: str, readonly: bool) -> None:
    disk = _sub(devices, "disk", type="volume", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt)
    _sub(disk, "source", pool=pool, volume=volume)
    # virtio: Debian's cloud kernel has no AHCI driver, so a SATA seed would be invisible.
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")


def _devices(devices: ET.Element, node: NodePlan, lab_networks: dict[str, str], media: DomainMedia) -> None:
    _disk(devices, media.pool, media.disk_volume, "qcow2", "vda", readonly=False)
    if media.seed_volume:
        _disk(devices, media.pool, media.seed_volume, "raw", "vdb", readonly=True)
    for nic in node.nics:
        interface = _sub(devices, "interface", type="network")
        _sub(interface, "mac", address=nic.mac)
        _sub(interface, "source", network=lab_networks[nic.network])
        _sub(interface, "model", type="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=media.console_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="virtio")


def pool_xml(name: str, path: str) -> str:
    root = ET.Element("pool", type="dir")
    _sub(root, "name", name)
    target = _sub(root, "target")
    _sub(target, "path", path)
    return ET.tostring(root, encoding="unicode")


def volume_xml(name: str, capacity: int, fmt: str, backing: tuple[str, str] | None = None) -> str:
    """A volume of ``capacity`` bytes; with ``backing`` = (path, format), a copy-on-write overlay."""
    root = ET.Element("volume")
    _sub(root, "name", name)
    _sub(root, "capacity", str(capacity), unit="bytes")
    target = _sub(root, "target")
    _sub(target, "format", type=fmt)
    if backing:
        store = _sub(root, "backingStore")
        _sub(store, "path", backing[0])
        _sub(store, "format", type=backing[1])
    return ET.tostring(root, encoding="unicode")
