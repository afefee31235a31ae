"""Tables and JSON rows the CLI prints: the plan, the status."""

from collections.abc import Sequence
from typing import Any

from labctl.lab.budget import duration
from labctl.lab.plan import API_PORT, Plan
from labctl.lab.versions import load_versions


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
        "kubernetes": {"version": lab.kubernetes.version, "cni": lab.kubernetes.cni},
        "accel": plan.accel,
        "ready_timeout": plan.budget.host_timeout,
        "api": {"name": plan.api_name, "address": str(plan.api_address)},
        "networks": [
            {"name": net.name, "key": net.key, "mode": net.mode, "cidr": str(net.cidr),
             "host_bridge": net.host_bridge, "host_address": str(net.host_address.ip) if net.host_address else None}
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
    nets = [[net.name, net.mode, str(net.cidr), net.host_bridge or "-",
             str(net.host_address.ip) if net.host_address else "-"] for net in plan.networks]
    return (
        table(["NODE", "ROLE", "DOMAIN", "CPUS", "MEMORY", "DISK", "INTERNAL", "MAC", "NAT"], rows)
        + "\n"
        + table(["NETWORK", "MODE", "CIDR", "HOST BRIDGE", "HOST"], nets)
        + f"\nAPI {plan.api_name} -> {plan.api_address}:{API_PORT}\n"
        + "\n".join(kubernetes_lines(plan)) + "\n"
    )


def kubernetes_lines(plan: Plan) -> list[str]:
    """What the Kubernetes minor needs and the budget the accelerator gets."""
    spec = plan.lab.kubernetes
    minor = load_versions().minor(spec.version)
    accel = plan.accel or f"{plan.lab.accel} (resolved by `up`; budgets shown for tcg)"
    return [
        f"Kubernetes {spec.version}: kubeadm {minor.kubeadm_api}, {minor.needs}, "
        f"upstream support until {minor.end_of_support.isoformat()}, {spec.cni} {minor.cni[spec.cni]}",
        f"Accelerator {accel}: `up` waits at most {duration(plan.budget.host_timeout)} "
        f"(every node fails with its own message before)",
    ]


def render_status_table(rows: Sequence[Any]) -> str:
    return table(["NODE", "ROLE", "DOMAIN", "STATE", "PHASE", "ADDRESSES"],
                 [[r.name, r.role, r.domain, r.state, r.phase, " ".join(r.addresses)] for r in rows])
