"""What a lab was built as, and what of a changed lab.yaml cannot be applied in place."""

from typing import Any

from labctl.lab.plan import Plan


def plan_fingerprint(plan: Plan) -> dict[str, Any]:
    """The parts of a plan that libvirt objects and guests are built from (JSON-ready)."""
    return {
        "networks": {net.key: {"cidr": str(net.cidr), "mode": net.mode, "host_bridge": net.host_bridge}
                     for net in plan.networks},
        "nodes": {
            node.name: {"role": node.role, "cpus": node.cpus, "memory": node.memory, "disk": node.disk,
                        "nics": [[nic.network, nic.mac, str(nic.address)] for nic in node.nics]}
            for node in plan.nodes
        },
        "backend": plan.lab.backend,
        "domain": plan.lab.domain,
        "user": plan.lab.user,
        "api": str(plan.api_address),  # baked into every node's seed (DNS, kubeadm endpoint)
        "etcd": plan.lab.kubernetes.etcd,  # stacked or external: kubeadm's configuration on every master
    }


def unappliable_changes(built: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Differences between the built lab and the wanted one that `up` cannot apply in place.

    Adding nodes is applied (they are created); everything else that changes an existing
    object (a subnet, a node's size or address, a removed node, the domain, the etcd topology) is
    listed, and so are added etcd members: an etcd cluster's membership is fixed when it forms here.
    """
    changes = _network_changes(built, wanted)
    networks_changed = bool(changes)  # then addresses and the API address follow from the subnet
    keys = ("backend", "domain", "user", "etcd") + (() if networks_changed else ("api",))
    changes += [f"{name} added (etcd members are fixed when the cluster forms)" for name, spec in
                wanted["nodes"].items() if spec["role"] == "etcd" and name not in built.get("nodes", {})
                and built.get("etcd") == "external"]
    for key in keys:
        if key in built and built.get(key) != wanted.get(key):
            changes.append(f"{key} {built.get(key)} → {wanted.get(key)}")
    for name, spec in built.get("nodes", {}).items():
        if name not in wanted["nodes"]:
            changes.append(f"{name} removed")
            continue
        changes += _node_changes(name, spec, wanted["nodes"][name], networks_changed)
    return changes


def _network_changes(built: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    changes = []
    for net, spec in built.get("networks", {}).items():
        now = wanted["networks"].get(net, {})
        # A field recorded by an older labctl that is no longer part of the fingerprint is skipped.
        changes += [f"networks.{net}.{field} {old} → {now[field]}" for field, old in spec.items()
                    if field in now and old != now[field]]
    return changes


def _node_changes(name: str, old_spec: dict[str, Any], new_spec: dict[str, Any], networks_changed: bool) -> list[str]:
    changes = []
    for field, old in old_spec.items():
        new = new_spec[field]
        if old != new and not (field == "nics" and networks_changed):
            shown = (old, new) if field != "nics" else ("its addresses", "new ones")
            changes.append(f"{name}.{field} {shown[0]} → {shown[1]}")
    return changes
