"""What `labctl doctor` (and the gate in front of `up`) learns from VirtualBox: its version, VT-x/AMD-V
and memory (``list hostinfo``), the kernel driver, the host-only interface the lab needs, free disk,
and the NAT networks and host-only interfaces whose ranges could clash. Judging is :mod:`labctl.ops.doctor`'s.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.backends.base import ForeignNetwork, HypervisorFacts, Tool
from labctl.backends.virtualbox.definition import (
    TAG_KEY,
    NetworkRecord,
    is_labs_vm,
    network_records,
    read_tag,
    settings_file,
)
from labctl.backends.virtualbox.networks import hostonly_fix
from labctl.backends.virtualbox.output import VmEntry, VmInfo
from labctl.backends.virtualbox.vboxmanage import Record, VBoxManage
from labctl.errors import BackendError
from labctl.lab.accel import HostFacts
from labctl.lab.plan import NetworkPlan, Plan

if TYPE_CHECKING:
    from labctl.backends.virtualbox.backend import VirtualBoxBackend

DEV = Path("/dev")
DRIVER_FIX = "sudo /sbin/vboxconfig (Debian/Ubuntu: apt-get install virtualbox-dkms), then run labctl again"
HOSTONLY = "host-only interface"


def host_accel(info: dict[str, str]) -> HostFacts:
    """VirtualBox has no software emulation: hardware virtualization as ``list hostinfo`` reports it."""
    hardware = info.get("Processor supports HW virtualization")
    return HostFacts(kvm_device=False, modules=frozenset(), emulation=False,
                     hardware=None if hardware is None else hardware == "yes")


def accel_facts(manage: VBoxManage) -> HostFacts:
    return host_accel(manage.host_info())


def driver_hint(info: VmInfo, platform: str = sys.platform, dev: Path = DEV) -> str:
    """Why a VM may not have started, where VBoxManage does not say (it reports only an exit code)."""
    if platform.startswith("linux") and not (dev / "vboxdrv").exists():
        return f"VirtualBox's kernel driver is not loaded ({dev / 'vboxdrv'} is missing): run {DRIVER_FIX}"
    return f"VirtualBox's log of the VM says why: {info.values.get('LogFldr', 'the Logs folder of the VM')}/VBox.log"


def host_tools(plan: Plan, interfaces: list[Record], records: dict[str, NetworkRecord], platform: str = sys.platform,
               dev: Path = DEV) -> tuple[Tool, ...]:
    """The kernel driver (Linux: `up` defines the lab without it, VMs then cannot start) and, for an
    isolated internal network, a host-only interface at the lab's host address or the means to make one."""
    tools = []
    if platform.startswith("linux"):
        tools.append(Tool("vboxdrv", (dev / "vboxdrv").exists(),
                          "VirtualBox's kernel driver: without it VMs are defined but cannot start", DRIVER_FIX,
                          required=False))
    net = plan.network("internal")
    if net.mode == "isolated":
        tools.append(_hostonly_tool(net, lab_hostonly(net, interfaces, records), platform, dev))
    return tuple(tools)


def _hostonly_tool(net: NetworkPlan, device: str | None, platform: str, dev: Path) -> Tool:
    needed = f"the host's address {net.host_address} on {net.name} needs one"
    if device is not None:
        return Tool(HOSTONLY, True, f"{device}, the host's side of {net.name} at {net.host_address}", "")
    if platform == "darwin":
        return Tool(HOSTONLY, False, f"{needed}; VirtualBox 7 on macOS has host-only networks instead, which "
                    "labctl does not drive", "set networks.internal.mode: bridge or intnet")
    if platform.startswith("linux") and not (dev / "vboxnetctl").exists():
        return Tool(HOSTONLY, False, f"{needed}, and VirtualBox cannot make one here ({dev / 'vboxnetctl'} is "
                    "missing)", hostonly_fix(net))
    return Tool(HOSTONLY, True, f"not yet: `up` makes one for the host's address {net.host_address} on {net.name}",
                "")


def lab_hostonly(net: NetworkPlan, interfaces: Iterable[Record], records: dict[str, NetworkRecord]) -> str | None:
    """The host-only interface of ``net``: the recorded one, or one at its host address (adopted by `up`)."""
    names = {found.get("Name") for found in interfaces}
    record = records.get(net.name)
    if record is not None and record.device in names:
        return record.device
    assert net.host_address is not None
    wanted = (str(net.host_address.ip), str(net.host_address.netmask))
    return next((found["Name"] for found in interfaces
                 if (found.get("IPAddress"), found.get("NetworkMask")) == wanted and found.get("Name")), None)


def foreign_networks(plan: Plan, natnetworks: list[Record], interfaces: list[Record],
                     records: dict[str, NetworkRecord]) -> tuple[ForeignNetwork, ...]:
    """VirtualBox's NAT networks and host-only interfaces with their owners (a lab's record, else None)
    and ranges; the interface the lab would adopt counts as the lab's."""
    owner = {name: record.tag.lab for name, record in records.items()}
    found = [ForeignNetwork(net["Name"], owner.get(net["Name"]), (IPv4Network(net["Network"], strict=False),))
             for net in natnetworks if net.get("Name") and net.get("Network")]
    devices = {record.device: record.tag.lab for record in records.values() if record.mode == "isolated"}
    internal = plan.network("internal")
    adoptable = lab_hostonly(internal, interfaces, records) if internal.mode == "isolated" else None
    for interface in interfaces:
        name, address, mask = interface.get("Name"), interface.get("IPAddress"), interface.get("NetworkMask")
        if not name or not address or not mask:
            continue
        cidr = IPv4Network(f"{address}/{mask}", strict=False)
        if not cidr.network_address.is_unspecified:  # an interface without an address yet
            found.append(ForeignNetwork(name, plan.lab.name if name == adoptable else devices.get(name), (cidr,)))
    return tuple(found)


def hypervisor_facts(backend: VirtualBoxBackend, plan: Plan) -> HypervisorFacts:
    manage, lab = backend.manage, plan.lab.name
    facts = HypervisorFacts(target=backend.target, local=True)
    try:
        free = _free(backend.root)  # the root may come from VirtualBox's settings
        info = manage.host_info()
        records = network_records(manage.extradata("global"))
        natnetworks, interfaces = manage.list_natnetworks(), manage.list_hostonlyifs()
        bridges = frozenset(found["Name"] for found in manage.list_bridgedifs() if found.get("Name"))
        registered = {entry.uuid: entry for entry in manage.list_vms()}
        running = {entry.uuid for entry in manage.list_running_vms()}
        foreign = _foreign_vms(backend, plan, registered)
    except BackendError as err:
        return replace(facts, error=f"connected, but {err.message}")
    mine = {name for name, record in records.items() if record.tag.lab == lab}
    foreign += [f"network {net.name}" for net in plan.networks if net.name not in mine and
                (net.name in records or any(found.get("Name") == net.name for found in natnetworks))]
    internal = plan.network("internal")
    own = lab_hostonly(internal, interfaces, records) if internal.mode == "isolated" else None
    memory = info.get("Memory available", "").split()
    return replace(
        facts, accel=host_accel(info), tools=host_tools(plan, interfaces, records), disk_free=free,
        mem_available_mib=int(memory[0]) if memory and memory[0].isdigit() else None,
        defined=frozenset(node.name for node in plan.nodes if node.uuid in registered),
        running=frozenset(node.name for node in plan.nodes if node.uuid in running),
        networks=foreign_networks(plan, natnetworks, interfaces, records), foreign=tuple(foreign),
        own_devices=frozenset({own} if own else set()), bridges=bridges,
    )


def _foreign_vms(backend: VirtualBoxBackend, plan: Plan, registered: dict[str, VmEntry]) -> list[str]:
    """VMs under the plan's UUIDs that are not the lab's (an inaccessible one is left to `up` to report)."""
    foreign = []
    for node in plan.nodes:
        entry = registered.get(node.uuid)
        if entry is None or not entry.accessible:
            continue
        info = backend.vm_info(node.uuid)
        cfg = info.values.get("CfgFile", "") if info is not None else ""
        tag = read_tag(backend.manage.get_extradata(node.uuid, TAG_KEY))
        if info is not None and not is_labs_vm(tag, plan.lab.name, cfg, settings_file(backend.root, plan.lab.name,
                                                                                       node)):
            foreign.append(f"VM {entry.name} ({node.uuid})")
    return foreign


def _free(root: Path) -> int | None:
    """Free bytes where the lab's disks go (the nearest existing folder on the way to it)."""
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return shutil.disk_usage(where).free
    except OSError:
        return None
