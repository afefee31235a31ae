"""up, status and destroy: the plan applied through a backend, step by step, idempotently."""

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl.backends.base import Backend, BaseImage, LabObject, NodeRequest
from labctl.backends.libvirt.xml import Tag
from labctl.errors import ConfigError
from labctl.guest.seed import build_seed_iso, render_seed
from labctl.lab.drift import plan_fingerprint, unappliable_changes
from labctl.lab.plan import NodePlan, Plan
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets

Report = Callable[[str], None]


@dataclass(frozen=True)
class NodeStatus:
    name: str
    role: str
    domain: str
    state: str
    addresses: tuple[str, ...]


def lab_id_for(plan: Plan, backend: Backend, state: LabState, ids: set[str] | None = None) -> str:
    """The lab's id: the state record's, else the one in libvirt's tags, else a new one.
    ``ids`` are the tags' ids when the caller has already listed them."""
    ids = backend.find_lab_ids(plan.lab.name) if ids is None else ids
    recorded = state.record().get("id")
    if recorded and ids and recorded not in ids:
        # The state dir was recreated while the lab lives on: trust libvirt, it holds the objects.
        state.save_record({**state.record(), "id": sorted(ids)[0]})
    return state.lab_id(known=sorted(ids)[0] if ids else None)


def seed_isos(plan: Plan, state: LabState) -> dict[str, bytes]:
    """Every node's seed ISO, by node name."""
    secrets = ensure_secrets(state, plan)
    return {node.name: build_seed_iso(render_seed(plan, node, secrets)) for node in plan.nodes}


@dataclass(frozen=True)
class UpResult:
    changes: int
    lab_id: str
    console_offsets: dict[str, int]  # where each node's console log stood before this run started it


def up(plan: Plan, backend: Backend, state: LabState, image: BaseImage, domain_type: str, report: Report) -> UpResult:
    """Create what is missing, keep what exists, start what is stopped."""
    lab = plan.lab
    wanted = plan_fingerprint(plan)
    built = state.record().get("built")
    existing = backend.find_lab_ids(lab.name)  # one listing of domains and networks serves both uses
    if built and existing:
        refused = unappliable_changes(built, wanted)
        if refused:
            raise ConfigError("", f"lab.yaml changed under the existing lab {lab.name}; cannot apply in place: "
                              + ", ".join(refused), "revert those changes, or rebuild with "
                              "`labctl destroy --yes` then `labctl up`")
    lab_id = lab_id_for(plan, backend, state, existing)
    state.save_record({**state.record(), "name": lab.name, "id": lab_id, "image_digest": image.digest,
                       "built": wanted})
    changes = 0

    def step(what: str, did: str) -> None:
        nonlocal changes
        changes += did not in ("exists", "running")
        report(f"{what}: {did}")

    step(f"base image {image.digest[:19]}…", backend.ensure_base_image(image))
    for net in plan.networks:
        step(f"network {net.libvirt_name}", backend.ensure_network(net, Tag(lab.name, lab_id, "network")))
    seeds = seed_isos(plan, state)
    for node in plan.nodes:
        tag = Tag(lab.name, lab_id, "domain", node.role, node.name)
        step(f"node {node.name}", backend.ensure_node(NodeRequest(node, tag, seeds[node.name], domain_type)))
    return UpResult(changes, lab_id, start_nodes(plan.nodes, backend, step))


def start_nodes(nodes: Sequence[NodePlan], backend: Backend, step: Callable[[str, str], None]) -> dict[str, int]:
    """Start the stopped ones of ``nodes``, in order; where each console log stood before its start.

    Readiness reads a started node's log from there on (the phases of this boot); a node that was
    already running gets 0, so the last phase it printed stands."""
    offsets = {}
    for node in nodes:
        before = _size(backend.console_log(node))
        did = backend.start_node(node)
        offsets[node.name] = before if did == "started" else 0
        step(f"start {node.name}", did)
    return offsets


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:  # not written yet, or not readable here (readiness then asks over ssh)
        return 0


def remove_seeds(plan: Plan, backend: Backend, lab_id: str, report: Report) -> None:
    """Once every node is ready its seed (which holds secrets) is no longer needed: remove it."""
    for node in plan.nodes:
        if backend.remove_seed(node, Tag(plan.lab.name, lab_id, "domain", node.role, node.name)) == "removed":
            report(f"seed of {node.name}: removed")


def lab_ids(lab: str, backend: Backend, state: LabState) -> set[str]:
    ids = backend.find_lab_ids(lab)
    recorded = state.record().get("id")
    return ids | {str(recorded)} if recorded else ids


def status(plan: Plan, backend: Backend, state: LabState) -> list[NodeStatus]:
    """Each planned node's domain state and addresses; tagged domains no longer planned too."""
    objects = backend.lab_objects(plan.lab.name, lab_ids(plan.lab.name, backend, state))
    domains = {obj.name: obj for obj in objects if obj.kind == "domain"}
    rows = []
    for node in plan.nodes:
        found = domains.pop(node.domain_name, None)
        addresses = tuple(str(nic.address.ip) for nic in node.nics)
        rows.append(NodeStatus(node.name, node.role, node.domain_name, found.state if found else "missing", addresses))
    for extra in domains.values():
        tag = extra.tag
        rows.append(NodeStatus(tag.node if tag else extra.name, tag.role if tag else "?", extra.name,
                               f"{extra.state} (not in plan)", ()))
    return rows


_REMOVAL_ORDER = {"domain": 0, "volume": 1, "network": 2}


def destroy(lab: str, backend: Backend, state: LabState, report: Report) -> list[LabObject]:
    """Remove every object tagged with ``lab`` and the lab's state; the shared base image stays."""
    objects = backend.lab_objects(lab, lab_ids(lab, backend, state))
    for obj in sorted(objects, key=lambda o: (_REMOVAL_ORDER[o.kind], o.name)):
        backend.remove(obj)
        report(f"removed {obj.kind} {obj.name}")
    _remove_state(state)
    return objects


def _remove_state(state: LabState) -> None:
    """Everything in the state dir goes, but the lock file the running command holds."""
    if not state.root.exists():
        return
    for entry in state.root.iterdir():
        if entry.name == "lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
