"""What doctor learns from VirtualBox, from recorded and written outputs, without VBoxManage: hardware
virtualization, the kernel driver, the host-only interface the lab needs, networks that could clash."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from labctl.backends.base import ForeignNetwork
from labctl.backends.virtualbox.definition import NetworkRecord
from labctl.backends.virtualbox.facts import driver_hint, foreign_networks, host_accel, host_tools, lab_hostonly
from labctl.backends.virtualbox.output import VmInfo, parse_info_lines, parse_records
from labctl.lab.accel import KVM, choose_accel
from labctl.lab.config import parse_lab
from labctl.lab.identity import network_tag
from labctl.lab.plan import plan_lab

HOSTINFO = """Host Information:

Host time: 2026-12-03T10:13:54.950000000Z
Processor online count: 2
Processor supports HW virtualization: {hw}
Processor supports PAE: yes
Processor#0 speed: 2600 MHz
Processor#0 description: Intel(R) Xeon(R) Processor
Memory size: 24105 MByte
Memory available: 20534 MByte
Operating system: Linux
"""

HOSTONLYIFS = """Name:            vboxnet0
GUID:            786f6276-656e-4074-8000-0a0027000000
DHCP:            Disabled
IPAddress:       192.168.56.1
NetworkMask:     255.255.255.0
Status:          Up
VBoxNetworkName: HostInterfaceNetworking-vboxnet0

Name:            vboxnet1
GUID:            786f6276-656e-4174-8000-0a0027000001
DHCP:            Disabled
IPAddress:       {address}
NetworkMask:     255.255.255.0
Status:          Up
VBoxNetworkName: HostInterfaceNetworking-vboxnet1

"""


@pytest.fixture(scope="module")
def lab():
    return plan_lab(parse_lab("backend: virtualbox\nnetworks: {nat: {cidr: 10.9.0.0/24}, "
                              "internal: {cidr: 10.9.1.0/24}}", "t"))


def test_hostinfo_gives_hardware_virtualization_and_never_tcg():
    info = parse_info_lines(HOSTINFO.format(hw="no"))
    assert info["Memory available"] == "20534 MByte"
    assert info["Processor#0 description"] == "Intel(R) Xeon(R) Processor"
    assert info["Host time"] == "2026-12-03T10:13:54.950000000Z"
    facts = host_accel(info)
    assert (facts.emulation, facts.hardware) == (False, False)
    assert choose_accel("kvm", facts).doubtful
    assert choose_accel("auto", host_accel(parse_info_lines(HOSTINFO.format(hw="yes")))).kind == KVM


def test_a_failed_start_says_the_driver_is_missing_on_linux(tmp_path):
    info = VmInfo({"LogFldr": "/vms/k8s-gateway/Logs"})
    assert "/sbin/vboxconfig" in driver_hint(info, "linux", tmp_path)
    (tmp_path / "vboxdrv").touch()
    assert driver_hint(info, "linux", tmp_path).endswith("/vms/k8s-gateway/Logs/VBox.log")
    assert driver_hint(info, "win32", tmp_path).endswith("/vms/k8s-gateway/Logs/VBox.log")


def test_tools_the_driver_and_a_host_only_interface_or_the_means_to_make_one(lab, tmp_path):
    interfaces = parse_records(HOSTONLYIFS.format(address="0.0.0.0"))
    driver, hostonly = host_tools(lab, interfaces, {}, "linux", tmp_path)
    assert (driver.name, driver.present, driver.required) == ("vboxdrv", False, False)
    assert (hostonly.present, hostonly.required) == (False, True)
    assert "/vboxnetctl is missing" in hostonly.purpose
    assert "hostonlyif ipconfig NAME --ip 10.9.1.254" in hostonly.install
    (tmp_path / "vboxnetctl").touch()
    assert host_tools(lab, interfaces, {}, "linux", tmp_path)[1].present
    (mac,) = host_tools(lab, interfaces, {}, "darwin", tmp_path)
    assert not mac.present and "mode: bridge or intnet" in mac.install
    adoptable = parse_records(HOSTONLYIFS.format(address="10.9.1.254"))
    (found,) = host_tools(lab, adoptable, {}, "darwin", tmp_path)
    assert found.present and found.purpose.startswith("vboxnet1,")
    intnet = plan_lab(parse_lab("backend: virtualbox\nnetworks: {internal: {mode: intnet}}", "t"))
    assert [tool.name for tool in host_tools(intnet, interfaces, {}, "linux", tmp_path)] == ["vboxdrv"]


def test_the_labs_host_only_interface_is_the_recorded_one_or_one_at_its_address(lab):
    internal = lab.network("internal")
    interfaces = parse_records(HOSTONLYIFS.format(address="10.9.1.254"))
    assert lab_hostonly(internal, interfaces, {}) == "vboxnet1"
    recorded = {internal.name: NetworkRecord(internal.name, network_tag(lab.lab.name, "x"), "isolated", "vboxnet0",
                                             True)}
    assert lab_hostonly(internal, interfaces, recorded) == "vboxnet0"
    assert lab_hostonly(internal, parse_records(HOSTONLYIFS.format(address="0.0.0.0")), {}) is None


def test_networks_that_could_clash_carry_their_owners(lab):
    natnetworks = [{"Name": "other-nat", "Network": "10.9.0.0/24"}, {"Name": "t-nat", "Network": "10.9.0.0/24"}]
    records = {"other-nat": NetworkRecord("other-nat", network_tag("other", "y"), "nat", "", True)}
    interfaces = parse_records(HOSTONLYIFS.format(address="10.9.1.254"))
    assert foreign_networks(lab, natnetworks, interfaces, records) == (
        ForeignNetwork("other-nat", "other", (IPv4Network("10.9.0.0/24"),)),
        ForeignNetwork("t-nat", None, (IPv4Network("10.9.0.0/24"),)),  # not recorded: somebody else's
        ForeignNetwork("vboxnet0", None, (IPv4Network("192.168.56.0/24"),)),
        ForeignNetwork("vboxnet1", lab.lab.name, (IPv4Network("10.9.1.0/24"),)),  # the lab adopts it
    )


def test_no_address_no_range():
    plan = plan_lab(parse_lab("backend: virtualbox", "t"))
    interfaces = parse_records(HOSTONLYIFS.format(address="0.0.0.0"))
    assert [net.name for net in foreign_networks(plan, [], interfaces, {})] == ["vboxnet0"]
