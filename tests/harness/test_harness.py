"""The private libvirtd harness runs real networks and a TCG guest, and cleans up."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from .libvirtd import PrivateLibvirtd, can_run, is_alive, render_conf, with_libvirt_accounts

NAT_BRIDGE = "ltnat0"
ISOLATED_BRIDGE = "ltiso0"


@pytest.fixture
def private_libvirtd_possible() -> None:
    ok, reason = can_run()
    if not ok:
        print(f"skipping private libvirtd test: {reason}")
        pytest.skip(reason)


def network_xml(name: str, bridge: str, address: str, *, nat: bool) -> str:
    network = ET.Element("network")
    ET.SubElement(network, "name").text = name
    ET.SubElement(network, "bridge", name=bridge, stp="off")
    if nat:
        ET.SubElement(network, "forward", mode="nat")
    ET.SubElement(network, "ip", address=address, netmask="255.255.255.0")
    return ET.tostring(network, encoding="unicode")


def domain_xml(name: str, console_log: Path, network: str) -> str:
    domain = ET.Element("domain", type="qemu")  # TCG: never kvm here
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = "96"
    ET.SubElement(domain, "vcpu").text = "1"
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    devices = ET.SubElement(domain, "devices")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(console_log))
    interface = ET.SubElement(devices, "interface", type="network")
    ET.SubElement(interface, "source", network=network)
    ET.SubElement(interface, "model", type="virtio")
    ET.SubElement(interface, "rom", enabled="no")  # no iPXE: nothing boots from the net
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def link_names(ip_output: str) -> set[str]:
    """Interface names from ``ip -o link`` lines like ``3: ltnat0: <...>``."""
    return {line.split(":")[1].strip().split("@")[0] for line in ip_output.splitlines() if ":" in line}


def host_links() -> set[str]:
    result = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10, check=True)
    return link_names(result.stdout)


def netns_names() -> set[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def start_lab(conn: libvirt.virConnect, base: Path) -> libvirt.virDomain:
    for xml in (
        network_xml("lt-nat", NAT_BRIDGE, "10.213.7.1", nat=True),
        network_xml("lt-iso", ISOLATED_BRIDGE, "10.213.8.1", nat=False),
    ):
        conn.networkDefineXML(xml).create()
    domain = conn.defineXML(domain_xml("lt-tiny", base / "console.log", "lt-iso"))
    domain.create()
    return domain


def test_render_conf_quotes_strings_and_lists() -> None:
    text = render_conf({"user": "root", "dynamic_ownership": 0, "namespaces": [], "a": ["x", "y"]})
    assert text == 'user = "root"\ndynamic_ownership = 0\nnamespaces = [  ]\na = [ "x", "y" ]\n'


def test_libvirt_accounts_are_added_once() -> None:
    passwd, group = with_libvirt_accounts("root:x:0:0::/root:/bin/sh", "root:x:0:\n")
    assert passwd.splitlines()[1].startswith("libvirt-qemu:x:")
    assert group.splitlines()[1].startswith("libvirt-qemu:x:")
    assert with_libvirt_accounts(passwd, group) == (passwd, group)


@pytest.mark.slow
@pytest.mark.libvirt
@pytest.mark.usefixtures("private_libvirtd_possible")
def test_private_libvirtd_runs_a_lab_and_cleans_up(tmp_path: Path) -> None:
    daemon = PrivateLibvirtd(tmp_path)
    with daemon:
        assert daemon.netns in netns_names()
        conn = libvirt.open(daemon.uri)
        try:
            domain = start_lab(conn, tmp_path)
            assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert "<domain type='qemu'" in domain.XMLDesc()
            assert (tmp_path / "console.log").exists()
        finally:
            conn.close()
        listed = daemon.run_in_netns(["virsh", "-c", daemon.tcp_uri, "list", "--name"], timeout=30)
        assert listed.stdout.split() == [domain.name()]  # TCP, inside the namespace only
        inside = link_names(daemon.run_in_netns(["ip", "-o", "link"], timeout=10).stdout)
        assert {NAT_BRIDGE, ISOLATED_BRIDGE} <= inside
        assert NAT_BRIDGE not in host_links()
        pids = daemon.recorded_pids()
        assert len(pids) >= 5  # virtlogd, libvirtd, qemu, two dnsmasq
    assert not [pid for pid in pids | daemon.recorded_pids() if is_alive(pid)]
    assert daemon.netns not in netns_names()
    daemon.stop()  # idempotent
