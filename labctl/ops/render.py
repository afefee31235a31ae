"""Presenting the plan and the status (tables, JSON rows) and writing `labctl render` artifacts."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labctl.backends.libvirt.xml import DomainMedia, Tag, domain_xml, network_xml
from labctl.guest.seed import build_seed_iso, render_seed
from labctl.lab.plan import Plan
from labctl.lab.state import LabState, write_private
from labctl.pki.secrets import ensure_secrets

RENDER_LAB_ID = "000000000000"  # `render` shows the shape; the real id is assigned at first `up`


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
             for row in (headers, *rows)]
    return "\n".join(lines) + "\n"


def plan_rows(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data."""
    lab = plan.lab
    return {
        "lab": lab.name,
        "domain": lab.domain,
        "api": {"name": plan.api_name, "address": str(plan.api_address)},
        "networks": [
            {"name": net.libvirt_name, "key": net.key, "mode": net.mode, "cidr": str(net.cidr),
             "bridge": net.bridge, "host_address": str(net.host_address.ip) if net.host_address else None}
            for net in plan.networks
        ],
        "nodes": [
            {"name": node.name, "role": node.role, "domain": node.domain_name, "fqdn": node.fqdn,
             "cpus": node.cpus, "memory_mib": node.memory, "disk_gib": node.disk,
             "nics": [{"network": nic.network, "mac": nic.mac, "address": str(nic.address)} for nic in node.nics]}
            for node in plan.nodes
        ],
    }


def render_plan_table(plan: Plan) -> str:
    rows = []
    for node in plan.nodes:
        nics = {nic.network: nic for nic in node.nics}
        internal, nat = nics["internal"], nics.get("nat")
        rows.append([node.name, node.role, node.domain_name, str(node.cpus), f"{node.memory} MiB",
                     f"{node.disk} GiB", str(internal.address.ip), internal.mac,
                     str(nat.address.ip) if nat else "-"])
    nets = [[net.libvirt_name, net.mode, str(net.cidr), net.bridge,
             str(net.host_address.ip) if net.host_address else "-"] for net in plan.networks]
    return (
        table(["NODE", "ROLE", "DOMAIN", "CPUS", "MEMORY", "DISK", "INTERNAL", "MAC", "NAT"], rows)
        + "\n"
        + table(["NETWORK", "MODE", "CIDR", "BRIDGE", "HOST"], nets)
        + f"\nAPI {plan.api_name} -> {plan.api_address}:6443\n"
    )


def render_status_table(rows: Sequence[Any]) -> str:
    return table(["NODE", "ROLE", "DOMAIN", "STATE", "ADDRESSES"],
                 [[r.name, r.role, r.domain, r.state, " ".join(r.addresses)] for r in rows])


def write_render(plan: Plan, state: LabState, directory: Path, domain_type: str) -> list[Path]:
    """Every artifact per node (seed files, seed ISO, domain XML) and the network XMLs."""
    lab = plan.lab
    lab_id = state.record().get("id") or RENDER_LAB_ID
    secrets = ensure_secrets(state, plan)
    written: list[Path] = []
    networks = {net.key: net.libvirt_name for net in plan.networks}
    for net in plan.networks:
        path = directory / "networks" / f"{net.libvirt_name}.xml"
        written.append(_write(path, network_xml(net, Tag(lab.name, lab_id, "network")).encode()))
    for node in plan.nodes:
        node_dir = directory / node.name
        files = render_seed(plan, node, secrets)
        for name, data in files.items():
            written.append(_write(node_dir / name, data))
        written.append(_write(node_dir / "seed.iso", build_seed_iso(files)))
        media = DomainMedia("labctl", f"{node.domain_name}.qcow2", f"{node.domain_name}-seed.iso",
                            f"/var/log/libvirt/qemu/{node.domain_name}.console.log")
        tag = Tag(lab.name, lab_id, "domain", node.role, node.name)
        written.append(_write(node_dir / "domain.xml", domain_xml(node, networks, tag, domain_type, media).encode()))
    return written


def _write(path: Path, data: bytes) -> Path:
    # Seeds will carry secrets (issue: role content); treat every rendered file as private.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, data)
    return path
