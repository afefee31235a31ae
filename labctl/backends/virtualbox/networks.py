"""The lab's networks in VirtualBox, each recorded in the global extradata (VirtualBox cannot tag them):

* ``nat``: a NAT network on the plan's CIDR (its gateway is .1, the plan's host address, where the
  gateway node routes and resolves); no DHCP.
* ``isolated``: a host-only interface with the host at the plan's address (.254), so `labctl ssh` and
  the kubeconfig work from the host. One already at that address is adopted (and left by destroy):
  where creating one needs an administrator, it can be made once by hand.
* ``bridge``: the nodes' NICs bridged onto the named host interface; nothing to create.
* ``intnet``: a VirtualBox internal network, which exists while a NIC names it; the host is not on it.

The record is written before the network is made, so a network under the lab's name without a record
is somebody else's, and one with a record but missing (an interrupted ``up``) is made by the next.
"""

from __future__ import annotations

import contextlib

from labctl.backends.virtualbox.definition import (
    NIC_KINDS,
    NetworkRecord,
    NicTarget,
    hostonlyif_ipconfig_args,
    natnetwork_add_args,
    natnetwork_modify_args,
    network_commands,
    network_key,
    network_records,
    network_value,
    nic_target,
)
from labctl.backends.virtualbox.vboxmanage import Record, VBoxManage, VBoxManageError
from labctl.errors import BackendError
from labctl.lab.identity import Tag, network_tag
from labctl.lab.plan import NetworkPlan, NodePlan, Plan


def network_name(lab: str, key: str) -> str:
    """The plan's name of a lab network (``<lab>-<key>``)."""
    return f"{lab}-{key}"


def not_ours(name: str, lab: str, remove: str) -> BackendError:
    return BackendError(f"network {name} exists but is not part of lab {lab}",
                        f"remove it ({remove}) or choose another lab name (--name)")


def hostonly_fix(net: NetworkPlan) -> str:
    assert net.host_address is not None
    ip, mask = net.host_address.ip, net.host_address.netmask
    return ("load VirtualBox's host-only driver (Linux: sudo modprobe vboxnetadp, or sudo /sbin/vboxconfig), or "
            f"make one as administrator: VBoxManage hostonlyif create, then VBoxManage hostonlyif ipconfig NAME "
            f"--ip {ip} --netmask {mask} (labctl uses an interface at that address); or set "
            "networks.internal.mode: bridge or intnet")


def ensure_network(manage: VBoxManage, net: NetworkPlan, tag: Tag) -> str:
    record = network_records(manage.extradata("global")).get(net.name)
    if record is not None and record.tag.lab != tag.lab:
        raise not_ours(net.name, tag.lab, f"`labctl --name {record.tag.lab} destroy`")
    if net.mode == "nat":
        return _ensure_natnetwork(manage, net, tag, record)
    if net.mode == "isolated":
        return _ensure_hostonly(manage, net, tag, record)
    if net.mode == "bridge":
        _check_bridgeable(manage, net)
    if record is None:  # intnet and bridge: nothing to make on the host, the record is the network
        record_network(manage, net, tag, device=net.host_bridge or "")
        return "created"
    return "exists"


def record_network(manage: VBoxManage, net: NetworkPlan, tag: Tag, device: str = "", owned: bool = True) -> None:
    manage.set_extradata("global", network_key(net.name), network_value(net, tag, device, owned))


def _natnetwork(manage: VBoxManage, name: str) -> Record | None:
    return next((record for record in manage.list_natnetworks() if record.get("Name") == name), None)


def _ensure_natnetwork(manage: VBoxManage, net: NetworkPlan, tag: Tag, record: NetworkRecord | None) -> str:
    found = _natnetwork(manage, net.name)
    if found is not None and record is None:
        raise not_ours(net.name, tag.lab, f"VBoxManage natnetwork remove --netname {net.name}")
    if record is None:
        record_network(manage, net, tag)
    did = "exists" if record is not None else "created"
    if found is None:
        try:
            manage.call(*natnetwork_add_args(net))
        except VBoxManageError:
            with contextlib.suppress(VBoxManageError):  # not atomic: a refused add can leave the network
                manage.natnetwork_remove(net.name)
            raise
        found, did = _natnetwork(manage, net.name), "created"
    elif not _as_planned(net, found):
        # Ours (recorded), but an add cut short left VirtualBox's defaults (10.0.2.0/24, DHCP on).
        manage.call(*natnetwork_modify_args(net))
        found, did = _natnetwork(manage, net.name), "updated"
    _check_natnetwork(net, found)
    return did


def _as_planned(net: NetworkPlan, found: Record) -> bool:
    return (found.get("Network"), found.get("DHCP Server")) == (str(net.cidr), "No")


def _check_natnetwork(net: NetworkPlan, found: Record | None) -> None:
    """The NAT network has the plan's range, and its gateway is where the gateway node routes."""
    if found is None:
        raise BackendError(f"NAT network {net.name} was added but VirtualBox does not list it")
    if found.get("Network") != str(net.cidr):
        raise BackendError(f"NAT network {net.name} is {found.get('Network')}, the plan wants {net.cidr}",
                           "`labctl destroy`, then `labctl up`")
    if net.host_address is not None and found.get("Gateway") != str(net.host_address.ip):
        raise BackendError(f"NAT network {net.name} has its gateway at {found.get('Gateway')}; the lab routes "
                           f"through {net.host_address.ip}")


def _ensure_hostonly(manage: VBoxManage, net: NetworkPlan, tag: Tag, record: NetworkRecord | None) -> str:
    assert net.host_address is not None  # isolated: the plan gives the host .254
    interfaces = {found["Name"]: found for found in manage.list_hostonlyifs() if found.get("Name")}
    if record is not None and record.device in interfaces:
        if not _at(interfaces[record.device], net):
            manage.call(*hostonlyif_ipconfig_args(record.device, net.host_address))
            return "updated"
        return "exists"
    adoptable = next((name for name, found in interfaces.items() if _at(found, net)), None)
    if adoptable is not None:  # made by hand (creating one may need an administrator): used, never removed
        record_network(manage, net, tag, device=adoptable, owned=False)
        return "adopted"
    record_network(manage, net, tag)
    try:
        device = manage.hostonlyif_create()
    except VBoxManageError as err:
        raise BackendError(f"cannot create a host-only interface for network {net.name}: {err.message}",
                           hostonly_fix(net)) from err
    # Killed right here, the new interface is left unrecorded (with VirtualBox's default address).
    record_network(manage, net, tag, device=device)
    try:
        manage.call(*hostonlyif_ipconfig_args(device, net.host_address))
    except VBoxManageError as err:
        raise BackendError(f"cannot give host-only interface {device} the address {net.host_address}: {err.message}",
                           "VirtualBox on Linux and macOS allows host-only addresses only in the ranges of "
                           f"/etc/vbox/networks.conf (default 192.168.56.0/21): add a line `* {net.cidr}` to it, "
                           "or set networks.internal.cidr inside those ranges") from err
    return "created"


def _at(interface: Record, net: NetworkPlan) -> bool:
    """Is this host-only interface at the plan's host address?"""
    assert net.host_address is not None
    return (interface.get("IPAddress"), interface.get("NetworkMask")) == (str(net.host_address.ip),
                                                                           str(net.host_address.netmask))


def _check_bridgeable(manage: VBoxManage, net: NetworkPlan) -> None:
    names = {found["Name"] for found in manage.list_bridgedifs() if found.get("Name")}
    if net.host_bridge not in names:
        raise BackendError(f"no host interface named {net.host_bridge} to bridge onto (networks.internal.bridge)",
                           f"VirtualBox can bridge onto: {', '.join(sorted(names)) or 'none'}")


def nic_targets(manage: VBoxManage, lab: str, node: NodePlan) -> dict[str, NicTarget]:
    """What each of the node's NICs attaches to, by network key, from the networks' records."""
    records = network_records(manage.extradata("global"))
    targets = {}
    for nic in node.nics:
        name = network_name(lab, nic.network)
        record = records.get(name)
        if record is None or record.tag.lab != lab:
            raise BackendError(f"network {name} is not defined", "run `labctl up`")
        kind = NIC_KINDS[record.mode]
        if kind in ("hostonly", "bridged") and not record.device:
            raise BackendError(f"network {name} has no host interface yet", "run `labctl up` again")
        targets[nic.network] = NicTarget(kind, record.device if kind in ("hostonly", "bridged") else name)
    return targets


def plan_targets(manage: VBoxManage, plan: Plan) -> dict[str, NicTarget]:
    """What NICs attach to, for `render`: the recorded host-only interface where there is one already."""
    records = network_records(manage.extradata("global"))
    targets = {}
    for net in plan.networks:
        record = records.get(net.name)
        mine = record is not None and record.tag.lab == plan.lab.name
        targets[net.key] = nic_target(net, record.device if record is not None and mine else "")
    return targets


def commands(net: NetworkPlan, lab: str, lab_id: str) -> list[list[str]]:
    return network_commands(net, network_tag(lab, lab_id))
