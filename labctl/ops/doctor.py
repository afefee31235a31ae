"""`labctl doctor`: is this host ready for the lab? One line per check, OK/WARN/FAIL with the fix.

The checks are pure functions of the plan and of gathered facts (so tests fake the host); FAIL is
what `up` refuses on (:func:`blocking_failures`). Gathering lives in :mod:`labctl.ops.preflight`.
"""

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any, Literal

from labctl.backends.base import ForeignNetwork, HypervisorFacts, Tool
from labctl.errors import ConfigError, LabError
from labctl.lab.accel import HARDWARE_FIX, KVM, HostFacts, choose_accel
from labctl.lab.plan import NetworkPlan, Plan

Status = Literal["OK", "WARN", "FAIL"]
OK: Status = "OK"
WARN: Status = "WARN"
FAIL: Status = "FAIL"
GIB = 1 << 30
BASE_IMAGE_GIB = 3  # the base image in the pool
DISK_PER_NODE_GIB = 3  # what a node's thin overlay really grows to: packages, container images, logs
PRIVATE_RANGES = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
TCG_COST = ("expect a full lab to take 30-60 minutes to come up instead of about 10 "
            "(raise `up --timeout`, 45 minutes by default, on a slow host)")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix and self.status != OK else text


@dataclass(frozen=True)
class Route:
    """A host route or interface address: a network reached over ``dev``."""

    network: IPv4Network
    dev: str
    kind: str = "route"  # "route" or "address"


@dataclass(frozen=True)
class Facts:
    """What the checks look at. None means "could not be checked" (say, on a remote hypervisor)."""

    backend: str  # the backend's name: "libvirt", "virtualbox"
    target: str  # what it was asked to connect to
    local: bool  # the hypervisor runs on this host
    hypervisor: HypervisorFacts | None = None  # None: not connected
    connect_error: str | None = None
    connect_fix: str = ""
    host_accel: HostFacts | None = None  # this host's, where the hypervisor is local
    mem_available_mib: int | None = None  # this host's, where the hypervisor is local
    routes: tuple[Route, ...] | None = None
    bridges: frozenset[str] | None = None
    image: Check = field(default_factory=lambda: Check("image", WARN, "not checked"))
    pycdlib: bool = True


def blocking_failures(checks: Sequence[Check]) -> list[Check]:
    """The checks that make `up` refuse to start."""
    return [check for check in checks if check.status == FAIL]


def refuse_if_blocked(checks: Sequence[Check]) -> None:
    """Raise a LabError naming every FAIL (for `up`, which prints each line before refusing)."""
    failures = blocking_failures(checks)
    if failures:
        summary = "; ".join(f"{check.name}: {check.message}" + (f" (fix: {check.fix})" if check.fix else "")
                            for check in failures)
        raise LabError(f"host not ready: {summary}", "`labctl doctor` shows every check")


def run_checks(plan: Plan, facts: Facts) -> list[Check]:
    """Every check, in the order a user would fix them."""
    hv = facts.hypervisor or HypervisorFacts(facts.target, facts.local)
    memory = hv.mem_available_mib if hv.mem_available_mib is not None or not facts.local else facts.mem_available_mib
    checks = [
        check_hypervisor(facts),
        check_accel(plan.lab.accel, hv.accel or facts.host_accel),
        *(check_tool(tool, facts.local) for tool in hv.tools),
        check_memory(plan, memory, hv.running),
        check_disk(plan, hv.disk_free, hv.defined),
        *check_subnets(plan, facts.routes, facts.local, hv.own_devices),
    ]
    bridge = (check_bridge(plan, facts.bridges) if hv.bridges is None
              else check_bridged_interface(plan, hv.bridges))
    if bridge is not None:
        checks.append(bridge)
    networks = hv.networks if facts.hypervisor and not hv.error else None
    checks += [*check_other_labs(plan, networks, hv.foreign), facts.image, check_seed_tooling(facts.pycdlib)]
    return checks


def check_hypervisor(facts: Facts) -> Check:
    hv = facts.hypervisor
    if hv is None:
        return Check(facts.backend, FAIL, facts.connect_error or f"cannot connect to {facts.target}",
                     facts.connect_fix or "start the hypervisor's service, or pass the right --connect")
    if hv.error:
        return Check(facts.backend, FAIL, hv.error, "see the message; the hypervisor answered only in part")
    return Check(facts.backend, OK, f"connected to {hv.target}")


def check_accel(requested: str, facts: HostFacts | None) -> Check:
    if facts is None:
        return Check("accelerator", WARN, "not checked (hypervisor unreachable)")
    try:
        accel = choose_accel(requested, facts)
    except ConfigError as err:
        if not facts.emulation:  # no TCG to fall back on (VirtualBox)
            return Check("accelerator", FAIL, err.message, err.hint or HARDWARE_FIX)
        return Check("accelerator", FAIL, str(err), "set accel: auto or tcg in lab.yaml, or " + _kvm_fix(facts))
    if accel.doubtful:
        return Check("accelerator", WARN, accel.reason, HARDWARE_FIX.partition("; or")[0])
    if accel.kind == KVM:
        return Check("accelerator", OK, accel.reason)
    if requested == "tcg":
        return Check("accelerator", OK, f"{accel.reason}; {TCG_COST}")
    return Check("accelerator", WARN, f"{accel.reason}; {TCG_COST}",
                 _kvm_fix(facts) + "; or set accel: tcg to accept the cost")


def _kvm_fix(facts: HostFacts) -> str:
    if "kvm_pvm" in facts.modules and not facts.modules & {"kvm_intel", "kvm_amd"}:
        return "use a host (or a cloud VM with nested virtualisation) whose KVM is kvm_intel or kvm_amd"
    return ("enable VT-x/AMD-V (or nested virtualisation), load kvm_intel or kvm_amd, "
            "and make /dev/kvm usable (group kvm)")


def check_tool(tool: Tool, local: bool) -> Check:
    """A program the backend needs on the hypervisor host."""
    if tool.present is None:
        where = "on the remote hypervisor" if not local else "here"
        return Check(tool.name, WARN, f"not checked {where}", f"make sure {tool.name} is installed on the hypervisor")
    if tool.present:
        return Check(tool.name, OK, f"present ({tool.purpose})")
    return Check(tool.name, FAIL if tool.required else WARN, f"not found; {tool.purpose}", tool.install)


def _gib(mib_or_bytes: float, unit: int = 1024) -> str:
    return f"{mib_or_bytes / unit:.1f} GiB"


def check_memory(plan: Plan, available_mib: int | None, running: Collection[str] = ()) -> Check:
    """Free memory against what the nodes not yet running will take."""
    starting = [node for node in plan.nodes if node.name not in running]
    needed = sum(node.memory for node in starting)
    if not starting:
        return Check("memory", OK, f"every node is running ({_gib(sum(n.memory for n in plan.nodes))})")
    if available_mib is None:
        return Check("memory", WARN, f"free memory not checked; the lab needs {_gib(needed)}")
    message = f"{_gib(available_mib)} available, {len(starting)} nodes to start need {_gib(needed)}"
    fix = "free memory (close programs, stop other VMs) or lower nodes.*.memory / counts in lab.yaml"
    if available_mib >= needed:
        return Check("memory", OK, message)
    if 2 * available_mib >= needed:
        return Check("memory", WARN, f"{message}; guests take memory as they use it, but under load "
                     "the host will swap or kill a VM", fix)
    return Check("memory", FAIL, message, fix)


def check_disk(plan: Plan, free_bytes: int | None, defined: Collection[str] = ()) -> Check:
    """Free space where the pool is: enough for what the nodes really write, ideally for their full size."""
    new = [node for node in plan.nodes if node.name not in defined]
    least = (BASE_IMAGE_GIB if len(new) == len(plan.nodes) else 0) + DISK_PER_NODE_GIB * len(new)
    full = sum(node.disk for node in new)
    if free_bytes is None:
        return Check("disk", WARN, f"free space in the storage pool not checked; new nodes need {least} GiB or more")
    message = f"{_gib(free_bytes, GIB)} free in the storage pool"
    if free_bytes >= full * GIB:
        return Check("disk", OK, message)
    fix = "free space there, or set LABCTL_POOL_DIR to a larger file system before the first `up`"
    if free_bytes >= least * GIB:
        return Check("disk", WARN, f"{message}; the nodes' thin disks can grow to {full} GiB", fix)
    return Check("disk", FAIL, f"{message}; the new nodes need at least {least} GiB", fix)


def check_subnets(plan: Plan, routes: Sequence[Route] | None, local: bool = True,
                  own: Collection[str] = ()) -> list[Check]:
    """The lab's networks against the host's routes and addresses, ignoring the lab's own devices."""
    if routes is None:
        where = "a remote hypervisor's routes are" if not local else "host routes could not be read (ip -j); they are"
        return [Check("subnets", WARN, f"{where} not checked")]
    found: dict[tuple[str, IPv4Network, str], Check] = {}
    for net in plan.networks:
        for route in routes:
            if route.dev not in own and route.network.overlaps(net.cidr):
                found.setdefault((net.key, route.network, route.dev), _overlap(plan, net, route, routes))
    if not found:
        cidrs = ", ".join(f"{net.key} {net.cidr}" for net in plan.networks)
        return [Check("subnets", OK, f"{cidrs}: no overlap with host routes or interfaces")]
    return list(found.values())


def _overlap(plan: Plan, net: NetworkPlan, route: Route, routes: Sequence[Route]) -> Check:
    what = f"{net.key} network {net.cidr} overlaps {route.network} on {route.dev or 'no device'} (host {route.kind})"
    free = free_cidr([r.network for r in routes] + _lab_cidrs(plan), net.cidr.prefixlen)
    fix = f"set networks.{net.key}.cidr in lab.yaml to a free range" + (f", e.g. {free}" if free else "")
    if route.network.prefixlen < net.cidr.prefixlen:
        # The lab's narrower route wins on the host; only hosts of that range behind route.dev get hidden.
        return Check("subnets", WARN, f"{what}: hosts in {net.cidr} behind {route.dev} become unreachable", fix)
    return Check("subnets", FAIL, what, fix)


def _lab_cidrs(plan: Plan) -> list[IPv4Network]:
    k8s = plan.lab.kubernetes
    return [net.cidr for net in plan.networks] + [k8s.pod_cidr, k8s.service_cidr]


def free_cidr(taken: Sequence[IPv4Network], prefixlen: int = 24) -> IPv4Network | None:
    """The first private range of ``prefixlen`` overlapping none of ``taken``, or None."""
    size = 1 << (32 - prefixlen)
    for private in PRIVATE_RANGES:
        start, end = int(private.network_address), int(private.broadcast_address) + 1
        while private.prefixlen <= prefixlen and start + size <= end:
            candidate = IPv4Network((start, prefixlen))
            blocker = next((other for other in taken if candidate.overlaps(other)), None)
            if blocker is None:
                return candidate
            after = int(blocker.broadcast_address) + 1  # skip the whole blocker, aligned to the prefix
            start = max(start + size, -(-after // size) * size)
    return None


def check_bridge(plan: Plan, bridges: Collection[str] | None) -> Check | None:
    """Bridge mode only: the host bridge the internal network joins must exist."""
    net = plan.network("internal")
    if net.mode != "bridge":
        return None
    if bridges is None:
        return Check("bridge", WARN, f"bridge {net.host_bridge} not checked (remote hypervisor)")
    if net.host_bridge in bridges:
        return Check("bridge", OK, f"host bridge {net.host_bridge} exists")
    return Check("bridge", FAIL, f"no host bridge named {net.host_bridge} (networks.internal.bridge)",
                 f"create bridge {net.host_bridge} with your LAN interface in it (NetworkManager, systemd-networkd "
                 "or /etc/network/interfaces), or use networks.internal.mode: isolated")


def check_bridged_interface(plan: Plan, interfaces: Collection[str]) -> Check | None:
    """Bridge mode on a hypervisor that bridges onto host interfaces it lists itself (VirtualBox)."""
    net = plan.network("internal")
    if net.mode != "bridge":
        return None
    if net.host_bridge in interfaces:
        return Check("bridge", OK, f"host interface {net.host_bridge} can be bridged onto")
    known = ", ".join(sorted(interfaces)) or "none"
    return Check("bridge", FAIL, f"no host interface named {net.host_bridge} to bridge onto (networks.internal.bridge; "
                 f"the hypervisor offers: {known})",
                 "name one of those in networks.internal.bridge, or use networks.internal.mode: isolated or intnet")


def check_other_labs(plan: Plan, networks: Sequence[ForeignNetwork] | None, foreign: Sequence[str]) -> list[Check]:
    """Objects under the lab's names that are not the lab's, and the hypervisor's other networks on its ranges."""
    lab = plan.lab.name
    checks = [Check("names", FAIL, f"{name} exists but is not part of lab {lab}",
                    "remove it, or give this lab another name (--name, or name: in lab.yaml)") for name in foreign]
    for other in networks or ():
        if other.lab != lab:
            checks += _network_clashes(plan, other)
    if networks is None:
        return [*checks, Check("other labs", WARN, "the hypervisor's networks not checked (unreachable)")]
    return checks or [Check("other labs", OK, "no name clash or overlapping network")]


def _network_clashes(plan: Plan, other: ForeignNetwork) -> list[Check]:
    owner = f"lab {other.lab}'s network {other.name}" if other.lab else f"network {other.name}"
    remove = f"`labctl --name {other.lab} destroy`" if other.lab else f"remove network {other.name}"
    return [Check("other labs", FAIL, f"{net.key} network {net.cidr} overlaps {cidr} of {owner}",
                  f"set networks.{net.key}.cidr in lab.yaml to another range, or {remove}")
            for net in plan.networks for cidr in other.cidrs if cidr.overlaps(net.cidr)]


def check_seed_tooling(importable: bool) -> Check:
    if importable:
        return Check("seed tooling", OK, "pycdlib importable (builds the cloud-init seed ISOs)")
    return Check("seed tooling", FAIL, "pycdlib is not importable; labctl cannot build cloud-init seeds",
                 "reinstall labctl with its dependencies (pip install labctl, or pip install pycdlib)")


# --- parsing what the host says (pure) ----------------------------------------------------------------


def parse_routes(text: str) -> list[Route]:
    """IPv4 routes from ``ip -j route`` output; the default route overlaps everything and is skipped."""
    routes = []
    for entry in _json_list(text):
        try:
            network = IPv4Network(str(entry.get("dst", "")), strict=False)
        except ValueError:
            continue  # "default", IPv6
        if network.prefixlen:
            routes.append(Route(network, str(entry.get("dev", "")), "route"))
    return routes


def parse_addresses(text: str) -> list[Route]:
    """The networks of the IPv4 interface addresses in ``ip -j addr`` output."""
    found = []
    for link in _json_list(text):
        for info in link.get("addr_info") or []:
            if info.get("family") == "inet":
                network = IPv4Network(f"{info.get('local')}/{info.get('prefixlen')}", strict=False)
                found.append(Route(network, str(link.get("ifname", "")), "address"))
    return found


def parse_link_names(text: str) -> frozenset[str]:
    """Interface names in ``ip -j link`` output."""
    return frozenset(str(link["ifname"]) for link in _json_list(text) if link.get("ifname"))


def parse_meminfo(text: str) -> int | None:
    """MemAvailable from /proc/meminfo, in MiB."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable" and value.split():
            return int(value.split()[0]) // 1024
    return None


def _json_list(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
