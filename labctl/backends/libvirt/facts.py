"""What `labctl doctor` learns from libvirt: domains, networks, the storage pool, memory, and why a
connection to a local libvirt was refused. Judging the facts is :mod:`labctl.ops.doctor`'s job."""

from __future__ import annotations

import getpass
import grp
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt

from labctl.backends.base import ForeignNetwork, HypervisorFacts, Tool
from labctl.backends.libvirt.xml import bridge_device, read_tag
from labctl.errors import BackendError
from labctl.lab.plan import Plan

if TYPE_CHECKING:
    from labctl.backends.libvirt.backend import LibvirtBackend

LIBVIRT_SOCKETS = (Path("/run/libvirt/virtqemud-sock"), Path("/run/libvirt/libvirt-sock"))
QEMU_IMG = ("qemu-img", "libvirt makes the nodes' copy-on-write disks with it",
            "install qemu-utils (Debian/Ubuntu) or qemu-img (Fedora/RHEL)")


def hypervisor_facts(backend: LibvirtBackend, plan: Plan) -> HypervisorFacts:
    """Domain states, the networks libvirt knows, objects under our names that are not ours, pool space."""
    from labctl.backends.libvirt.backend import POOL_NAME, lookup, translated

    local = backend.is_local
    name, purpose, install = QEMU_IMG
    facts = HypervisorFacts(
        target=backend.target,
        local=local,
        accel=backend.accel_facts(),
        tools=(Tool(name, shutil.which(name) is not None if local else None, purpose, install),),
        mem_available_mib=None if local else _remote_memory(backend),
        own_devices=frozenset(bridge_device(plan.lab.name, net) for net in plan.networks),
    )
    lab = plan.lab.name
    try:
        domains = {node.name: lookup(backend.conn.lookupByName, node.domain_name, "domain") for node in plan.nodes}
        with translated("listing libvirt networks"):
            networks = tuple(parse_libvirt_network(net.XMLDesc(0), net.name())
                             for net in backend.conn.listAllNetworks(0))
        with translated("reading the lab's domains"):
            running = frozenset(name for name, domain in domains.items() if domain and domain.isActive())
            foreign = [f"domain {domain.name()}" for domain in domains.values()
                       if domain and _tag_lab(domain.XMLDesc(0)) != lab]
        pool = lookup(backend.conn.storagePoolLookupByName, POOL_NAME, "storage pool")
        with translated("reading the storage pool"):
            free = int(pool.info()[3]) if pool is not None and pool.isActive() else _free_where(backend, local)
    except BackendError as err:
        return replace(facts, error=f"connected, but {err.message}")
    mine = {net.name for net in plan.networks}
    foreign += [f"network {net.name}" for net in networks if net.name in mine and net.lab != lab]
    return replace(facts, defined=frozenset(name for name, domain in domains.items() if domain), running=running,
                 networks=networks, foreign=tuple(foreign), disk_free=free)


def _remote_memory(backend: LibvirtBackend) -> int | None:
    try:
        stats = backend.conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    except libvirt.libvirtError:
        return None
    return int(sum(stats.get(key, 0) for key in ("free", "buffers", "cached"))) // 1024


def _free_where(backend: LibvirtBackend, local: bool) -> int | None:
    """Before the first `up`: the free space where the pool will be made (here only)."""
    if not local:
        return None
    where = Path(backend.pool_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        stats = os.statvfs(where)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _tag_lab(xml_text: str) -> str | None:
    tag = read_tag(xml_text)
    return tag.lab if tag else None


def parse_libvirt_network(xml_text: str, name: str) -> ForeignNetwork:
    """A libvirt network's owner (from the labctl tag) and IPv4 ranges, from its XML."""
    cidrs = []
    for ip in ET.fromstring(xml_text).findall("ip"):
        mask = ip.get("prefix") or ip.get("netmask")
        if ip.get("family", "ipv4") == "ipv4" and ip.get("address") and mask:
            cidrs.append(IPv4Network(f"{ip.get('address')}/{mask}", strict=False))
    return ForeignNetwork(name, _tag_lab(xml_text), tuple(cidrs))


def socket_fix(uri: str, candidates: Sequence[Path] = LIBVIRT_SOCKETS) -> str:
    """Why a local system libvirt refused us, from its socket: missing, or not ours to write (group)."""
    if not uri.endswith("/system"):
        return ""
    sockets = [path for path in candidates if path.exists()]
    if not sockets:
        return "start libvirt: sudo systemctl enable --now libvirtd.socket (or virtqemud.socket)"
    path = sockets[0]
    if os.access(path, os.R_OK | os.W_OK):
        return (f"{path} is writable by you, so see the error: polkit refusing you (join group libvirt), "
                "or the daemon failing to start (systemctl status libvirtd virtqemud)")
    info = path.stat()
    try:
        group = grp.getgrgid(info.st_gid)
    except KeyError:
        return f"{path} is not writable by you (gid {info.st_gid})"
    if getpass.getuser() in group.gr_mem:
        return f"you are in group {group.gr_name} but this session is not: log in again (or run newgrp)"
    return f"{path} is group {group.gr_name}: sudo usermod -aG {group.gr_name} $USER, then log in again"
