"""Lab model → plan: nodes, names, addresses and MACs. Pure and deterministic."""

import dataclasses
import hashlib
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from labctl.lab.budget import LabBudget, budget_for, lab_budget
from labctl.lab.model import Lab, NetworkSpec

# Host offsets inside each network. The gateway owns .1 of the internal network because
# every node routes through it; the host side of an isolated network takes .254.
GATEWAY_OFFSET = 1
VIP_OFFSET = 10
# etcd members sit past the workers' room (at most 50: .31-.80), so every role can grow without renumbering.
ROLE_OFFSETS = {"lb": 11, "master": 21, "worker": 31, "etcd": 101}
INTERNAL_HOST_OFFSET = 254
NAT_HOST_OFFSET = 1  # the hypervisor's side of the NAT network (libvirt's host; VirtualBox's gateway is .1)
NAT_GATEWAY_OFFSET = 2
API_PORT = 6443  # the Kubernetes API, on the load balancer(s) and every master
LABCTL_UUID_NAMESPACE = uuid.UUID("6f1c3f0e-7a43-4d0a-9c5e-1b4c2f6a9d10")


@dataclass(frozen=True)
class NetworkPlan:
    key: str  # "nat" or "internal"
    name: str  # <lab>-<key>: what the hypervisor calls it
    mode: str  # "nat", "isolated", "bridge" or "intnet"
    cidr: IPv4Network
    host_address: IPv4Interface | None  # the host's address on it; None when bridged or intnet
    host_bridge: str | None  # bridge mode: the user's existing host bridge
    uuid: str


@dataclass(frozen=True)
class NicPlan:
    network: str  # network key
    mac: str
    address: IPv4Interface


@dataclass(frozen=True)
class NodePlan:
    name: str
    role: str
    index: int  # 1-based within the role
    domain_name: str
    fqdn: str
    cpus: int
    memory: int  # MiB
    disk: int  # GiB
    nics: tuple[NicPlan, ...]
    uuid: str

    @property
    def internal(self) -> NicPlan:
        return next(nic for nic in self.nics if nic.network == "internal")


@dataclass(frozen=True)
class Plan:
    lab: Lab
    networks: tuple[NetworkPlan, ...]
    nodes: tuple[NodePlan, ...]
    api_name: str
    api_address: IPv4Address  # lb1, or the keepalived VIP with two load balancers
    gateway_address: IPv4Address  # default route and resolver of every node
    # What the plan takes from outside once known, each set by the caller that learned it:
    accel: str | None = None  # "kvm" or "tcg": lab.yaml's, or `auto` resolved against the hypervisor at `up`
    cni_manifest: str | None = None  # the CNI manifest master1 applies, fetched, verified and adapted on the host

    def with_accel(self, accel: str) -> "Plan":
        """This plan under ``accel`` (what `auto` resolved to): seeds and waits follow from it."""
        return dataclasses.replace(self, accel=accel)

    def with_cni_manifest(self, text: str) -> "Plan":
        return dataclasses.replace(self, cni_manifest=text)

    @property
    def budget(self) -> LabBudget:
        """Every node's waits and deadline and the host's timeout, under the plan's accelerator (TCG's,
        the longer, while `auto` is not resolved)."""
        names = [(node.name, node.role, node.index) for node in self.nodes]
        return lab_budget(budget_for(self.accel), names, self.lab.role("lb").count)

    def node(self, name: str) -> NodePlan:
        return next(node for node in self.nodes if node.name == name)

    def nodes_of(self, role: str) -> tuple[NodePlan, ...]:
        return tuple(node for node in self.nodes if node.role == role)

    def network(self, key: str) -> NetworkPlan:
        return next(net for net in self.networks if net.key == key)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)


def offset_address(cidr: IPv4Network, offset: int) -> IPv4Interface:
    """The address ``offset`` hosts into ``cidr``, with the network's prefix."""
    return IPv4Interface(f"{cidr.network_address + offset}/{cidr.prefixlen}")


def derive_mac(lab: str, node: str, network: str, salt: int = 0) -> str:
    """A stable locally administered MAC in QEMU's 52:54:00 range, from lab, node and network."""
    digest = hashlib.sha256(f"{lab}/{node}/{network}/{salt}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def derive_uuid(lab: str, *parts: str) -> str:
    return str(uuid.uuid5(LABCTL_UUID_NAMESPACE, "/".join((lab, *parts))))


def plan_networks(lab: Lab) -> tuple[NetworkPlan, ...]:
    """The NAT network and the internal network of the lab."""
    host_side = lab.internal.mode == "isolated"  # bridged: the host has its own LAN address; intnet: none
    internal_host = offset_address(lab.internal.cidr, INTERNAL_HOST_OFFSET) if host_side else None
    return (
        _network_plan(lab, lab.nat, offset_address(lab.nat.cidr, NAT_HOST_OFFSET)),
        _network_plan(lab, lab.internal, internal_host),
    )


def _network_plan(lab: Lab, spec: NetworkSpec, host: IPv4Interface | None) -> NetworkPlan:
    return NetworkPlan(
        key=spec.key,
        name=f"{lab.name}-{spec.key}",
        mode=spec.mode,
        cidr=spec.cidr,
        host_address=host,
        host_bridge=spec.bridge,
        uuid=derive_uuid(lab.name, "network", spec.key),
    )


def node_names(lab: Lab) -> list[tuple[str, str, int]]:
    """(name, role, index) of every node, in boot order: gateway, load balancers, external etcd members
    (before the masters, which wait for their quorum), masters, workers."""
    names = [("gateway", "gateway", 1)]
    for role in ("lb", "etcd", "master", "worker"):
        names += [(f"{role}{i}", role, i) for i in range(1, lab.role(role).count + 1)]
    return names


def plan_lab(lab: Lab) -> Plan:
    """The whole deterministic plan of ``lab``."""
    nodes = []
    used_macs: set[str] = set()
    for name, role, index in node_names(lab):
        nics = _plan_nics(lab, name, role, index, used_macs)
        spec = lab.role(role)
        nodes.append(
            NodePlan(
                name=name,
                role=role,
                index=index,
                domain_name=f"{lab.name}-{name}",
                fqdn=f"{name}.{lab.domain}",
                cpus=spec.cpus,
                memory=spec.memory,
                disk=spec.disk,
                nics=nics,
                uuid=derive_uuid(lab.name, "domain", name),
            )
        )
    lb_count = lab.role("lb").count
    api_offset = VIP_OFFSET if lb_count > 1 else ROLE_OFFSETS["lb"]
    return Plan(
        lab=lab,
        networks=plan_networks(lab),
        nodes=tuple(nodes),
        api_name=f"api.{lab.domain}",
        api_address=offset_address(lab.internal.cidr, api_offset).ip,
        gateway_address=offset_address(lab.internal.cidr, GATEWAY_OFFSET).ip,
        accel=None if lab.accel == "auto" else lab.accel,
    )


def _plan_nics(lab: Lab, name: str, role: str, index: int, used_macs: set[str]) -> tuple[NicPlan, ...]:
    if role == "gateway":
        wanted = [("nat", offset_address(lab.nat.cidr, NAT_GATEWAY_OFFSET)),
                  ("internal", offset_address(lab.internal.cidr, GATEWAY_OFFSET))]
    else:
        wanted = [("internal", offset_address(lab.internal.cidr, ROLE_OFFSETS[role] + index - 1))]
    nics = []
    for network, address in wanted:
        salt = 0
        while (mac := derive_mac(lab.name, name, network, salt)) in used_macs:
            salt += 1  # a 24-bit collision inside one lab: rare, but MACs must be unique
        used_macs.add(mac)
        nics.append(NicPlan(network, mac, address))
    return tuple(nics)
