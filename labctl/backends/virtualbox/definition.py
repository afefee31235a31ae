"""What the plan's nodes and networks are in VirtualBox: file layout, tags as extradata, and the
VBoxManage argument lists that define them. Pure: no VBoxManage is run here.

Layout under the backend's folder (``LABCTL_VBOX_DIR``, else VirtualBox's default machine folder)::

    labctl/<lab>/<lab>-<node>/<lab>-<node>.vbox          the VM (createvm --groups /labctl/<lab>)
    labctl/<lab>/<lab>-<node>/<lab>-<node>-<id>.vdi      its differencing disk on the shared base
    labctl/<lab>/<lab>-<node>/<lab>-<node>-<id>-seed.iso the cloud-init seed (removed once ready)
    labctl/<lab>/<lab>-<node>/console.log                the serial port (rewritten at every boot)
    labctl-base/labctl-base-<algo>-<hex>-<n>.vdi         one immutable base per image digest

VMs carry their tag in extradata (``labctl/tag``: lab, lab id, kind, role, node and version as JSON, one
value, so never half written); NAT networks and host-only interfaces cannot, so their tags live in
VirtualBox's global extradata (``labctl/network/<name>``, with the network's mode and host interface).
Media carry the lab id in their names, as libvirt volumes do.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from labctl.backends.virtualbox.vboxmanage import (
    createvm_argv,
    diff_medium_argv,
    mac_to_vbox,
    storageattach_argv,
    storagectl_argv,
)
from labctl.lab.identity import Tag
from labctl.lab.plan import NetworkPlan, NodePlan

OSTYPE = "Debian_64"
# virtio-scsi for the disk and the seed DVD: Debian's cloud kernel has virtio_scsi (and sr_mod), no AHCI.
CONTROLLER = "virtio"
DISK_PORT = 0
SEED_PORT = 1
TAG_KEY = "labctl/tag"  # a VM's tag (JSON: lab, lab-id, kind, role, node, version)
COMPLETE_KEY = "labctl/complete"  # set last by ensure_node: the VM is fully defined
NETWORK_PREFIX = "labctl/network/"
BASE_PREFIX = "labctl/base/"
HOSTONLY_PLACEHOLDER = "<host-only interface made by `labctl up`>"
# The NIC attachment of each network mode, and the modifyvm option naming its network.
NIC_KINDS = {"nat": "natnetwork", "isolated": "hostonly", "bridge": "bridged", "intnet": "intnet"}
NIC_NETWORK_OPTION = {"natnetwork": "--nat-network", "hostonly": "--host-only-adapter",
                      "bridged": "--bridge-adapter", "intnet": "--intnet"}
# VM states (`showvminfo` VMState) in which the VM process runs, and how `status` names the states.
RUNNING = frozenset({"running", "paused", "starting", "stopping", "saving", "restoring", "teleporting",
                     "teleportingpausedvm", "teleportingin", "livesnapshotting", "onlinesnapshotting",
                     "deletingsnapshotlive", "deletingsnapshotlivepaused", "settingup", "gurumeditation"})
# "aborted": the VM process ended abnormally, or a VBoxManage holding the VM's session was killed; it starts
# as from power-off.
STATES = {"poweroff": "shut off", "running": "running", "paused": "paused", "saved": "saved", "aborted": "aborted",
          "starting": "starting", "stopping": "shutting down", "gurumeditation": "crashed"}


@dataclass(frozen=True)
class NodeFiles:
    """Where a node's VM and media live."""

    folder: Path
    settings: Path
    disk: Path
    seed: Path
    console: Path


def settings_file(root: Path, lab: str, node: NodePlan) -> Path:
    """Where ``createvm --basefolder ROOT --groups /labctl/<lab>`` writes the node's VM."""
    return root / "labctl" / lab / node.domain_name / f"{node.domain_name}.vbox"


def node_files(root: Path, lab: str, node: NodePlan, lab_id: str) -> NodeFiles:
    settings = settings_file(root, lab, node)
    stem = f"{lab}-{node.name}-{lab_id}"
    return NodeFiles(settings.parent, settings, settings.parent / f"{stem}.vdi",
                     settings.parent / f"{stem}-seed.iso", settings.parent / "console.log")


def is_labs_vm(found: Tag | None, lab: str, cfg_file: str, settings: Path) -> bool:
    """Is a VM with the plan's UUID the lab's? Tagged so, or untagged where the lab's createvm writes it
    (a createvm interrupted before the tag was written)."""
    if found is not None:
        return found.lab == lab
    return Path(cfg_file) == settings


def base_key(digest: str) -> str:
    """``sha256:<hex>`` → ``sha256-<24 hex>``: the base image's name stem and completion-marker key."""
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}-{hexdigest[:24]}"


def base_folder(root: Path) -> Path:
    return root / "labctl-base"


# --- tags ------------------------------------------------------------------------------------------


def tag_value(tag: Tag) -> str:
    """A tag as one extradata value (JSON): set and removed in one VBoxManage call, so never half written."""
    return json.dumps({"lab": tag.lab, "lab-id": tag.lab_id, "kind": tag.kind, "role": tag.role, "node": tag.node,
                       "version": tag.version}, sort_keys=True, separators=(",", ":"))


def _fields(value: str | None) -> dict[str, Any] | None:
    try:
        fields = json.loads(value) if value else None
    except ValueError:
        return None
    if not isinstance(fields, dict) or not all(isinstance(fields.get(key), str) and fields[key]
                                               for key in ("lab", "lab-id")):
        return None
    return fields


def read_tag(value: str | None) -> Tag | None:
    """The tag in an extradata value, or None when there is none (or it is not labctl's)."""
    fields = _fields(value)
    if fields is None:
        return None
    text = {key: str(fields.get(key) or "") for key in ("lab", "lab-id", "kind", "role", "node", "version")}
    return Tag(text["lab"], text["lab-id"], text["kind"], text["role"], text["node"], text["version"])


@dataclass(frozen=True)
class NetworkRecord:
    """A lab network as labctl recorded it in the global extradata."""

    name: str
    tag: Tag
    mode: str  # the plan's mode: nat, isolated, bridge, intnet
    device: str  # the host-only interface (isolated) or host interface (bridge); "" otherwise or not yet
    owned: bool  # False: an existing host-only interface the lab adopted (destroy leaves it)


def network_key(name: str) -> str:
    return NETWORK_PREFIX + name


def network_value(net: NetworkPlan, tag: Tag, device: str = "", owned: bool = True) -> str:
    """The global extradata value recording ``net``: its tag, mode and host interface."""
    fields = json.loads(tag_value(tag)) | {"mode": net.mode, "device": device, "owned": owned}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def network_records(global_values: Mapping[str, str]) -> dict[str, NetworkRecord]:
    """Every lab network recorded in the global extradata, by name."""
    records = {}
    for key, value in global_values.items():
        fields = _fields(value) if key.startswith(NETWORK_PREFIX) else None
        tag = read_tag(value) if fields is not None else None
        if fields is not None and tag is not None:
            name = key[len(NETWORK_PREFIX):]
            records[name] = NetworkRecord(name, tag, str(fields.get("mode") or ""), str(fields.get("device") or ""),
                                          fields.get("owned") is not False)
    return records


# --- argument lists -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NicTarget:
    kind: str  # natnetwork, hostonly, bridged, intnet
    network: str  # the NAT network, host-only interface, host interface or internal network


def nic_target(net: NetworkPlan, device: str = "") -> NicTarget:
    """What a NIC on ``net`` attaches to; ``device``: the lab's host-only interface, once known."""
    kind = NIC_KINDS[net.mode]
    if kind == "hostonly":
        return NicTarget(kind, device or HOSTONLY_PLACEHOLDER)
    if kind == "bridged":
        assert net.host_bridge  # the config requires it in bridge mode
        return NicTarget(kind, net.host_bridge)
    return NicTarget(kind, net.name)


def createvm_args(root: Path, lab: str, node: NodePlan) -> list[str]:
    """The VM by the plan's UUID (names are not unique in VirtualBox), in group /labctl/<lab>."""
    return createvm_argv(node.domain_name, root, uuid=node.uuid, groups=[f"/labctl/{lab}"], ostype=OSTYPE)


def modifyvm_args(node: NodePlan, targets: Mapping[str, NicTarget], console: Path) -> list[str]:
    """Size, firmware, boot order, NICs (virtio, the plan's MACs) and the serial port to a file.
    One modifyvm: VirtualBox applies all of it or none."""
    args = ["modifyvm", node.uuid, "--memory", str(node.memory), "--cpus", str(node.cpus), "--ioapic", "on",
            "--firmware", "bios", "--rtc-use-utc", "on", "--boot1", "disk", "--boot2", "dvd", "--boot3", "none",
            "--boot4", "none", "--graphicscontroller", "vmsvga", "--vram", "16", "--audio-enabled", "off",
            "--usb-ohci", "off", "--uart1", "0x3F8", "4", "--uartmode1", "file", str(console)]
    for slot, nic in enumerate(node.nics, start=1):
        target = targets[nic.network]
        args += [f"--nic{slot}", target.kind, f"{NIC_NETWORK_OPTION[target.kind]}{slot}", target.network,
                 f"--nic-type{slot}", "virtio", f"--macaddress{slot}", mac_to_vbox(nic.mac),
                 f"--cable-connected{slot}", "on"]
    return args


def controller_args(uuid: str) -> list[str]:
    return storagectl_argv(uuid, CONTROLLER, bus="virtio-scsi", controller="VirtIO", port_count=2, bootable=True)


def attach_disk_args(uuid: str, disk: str) -> list[str]:
    return storageattach_argv(uuid, CONTROLLER, DISK_PORT, 0, kind="hdd", medium=disk)


def attach_seed_args(uuid: str, seed: str) -> list[str]:
    return storageattach_argv(uuid, CONTROLLER, SEED_PORT, 0, kind="dvddrive", medium=seed)


def eject_seed_args(uuid: str, running: bool) -> list[str]:
    """Empty the seed's DVD drive (a running VM keeps the drive; --forceunmount if the guest holds it)."""
    return storageattach_argv(uuid, CONTROLLER, SEED_PORT, 0, kind="dvddrive", medium="emptydrive",
                              force_unmount=running)


def disk_mb(node: NodePlan) -> int:
    return node.disk * 1024


def node_commands(root: Path, lab: str, node: NodePlan, tag: Tag, targets: Mapping[str, NicTarget],
                  base: str) -> list[list[str]]:
    """Every command that defines ``node`` on ``base`` (the base VDI), in order: what `labctl render`
    shows and `up` runs (each only where its result is missing)."""
    files = node_files(root, lab, node, tag.lab_id)
    uuid = node.uuid
    return [
        createvm_args(root, lab, node),
        ["setextradata", uuid, TAG_KEY, tag_value(tag)],
        modifyvm_args(node, targets, files.console),
        controller_args(uuid),
        diff_medium_argv(base, files.disk),
        ["modifymedium", "disk", str(files.disk), "--autoreset", "off"],
        ["modifymedium", "disk", str(files.disk), "--resize", str(disk_mb(node))],
        attach_disk_args(uuid, str(files.disk)),
        attach_seed_args(uuid, str(files.seed)),
        ["setextradata", uuid, COMPLETE_KEY, "yes"],
    ]


def network_commands(net: NetworkPlan, tag: Tag) -> list[list[str]]:
    """What `up` runs for ``net``: its record in the global extradata first, then the network itself."""
    records = [["setextradata", "global", network_key(net.name), network_value(net, tag)]]
    if net.mode == "nat":
        return [*records, natnetwork_add_args(net)]
    if net.mode == "isolated":
        assert net.host_address is not None  # the plan gives the host .254 in isolated mode
        return [*records, ["hostonlyif", "create"], hostonlyif_ipconfig_args("vboxnetN", net.host_address)]
    return records  # intnet: made by the first NIC naming it; bridge: the host's own interface


def natnetwork_add_args(net: NetworkPlan) -> list[str]:
    """NAT network on the plan's CIDR, no DHCP (static addresses); its gateway is .1, the plan's host."""
    return ["natnetwork", "add", "--netname", net.name, "--network", str(net.cidr), "--enable", "--dhcp", "off"]


def natnetwork_modify_args(net: NetworkPlan) -> list[str]:
    """The lab's NAT network set back to the plan (an interrupted add leaves VirtualBox's defaults)."""
    return ["natnetwork", "modify", "--netname", net.name, "--network", str(net.cidr), "--enable", "--dhcp", "off"]


def hostonlyif_ipconfig_args(device: str, address: IPv4Interface) -> list[str]:
    return ["hostonlyif", "ipconfig", device, "--ip", str(address.ip), "--netmask", str(address.netmask)]


def render_commands(title: str, commands: Sequence[Sequence[str]]) -> str:
    """Commands as a reviewable script (``VBoxManage …`` lines, quoted for a POSIX shell)."""
    lines = [f"# {title}"] + [shlex.join(["VBoxManage", *command]) for command in commands]
    return "\n".join(lines) + "\n"
