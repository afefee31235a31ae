"""up, start, stop, status and destroy: the plan applied through a backend, step by step, idempotently.

Plain functions: the caller opens the backend, passes the lab's state and an :class:`Events` to hear
progress, and gets a result or a :class:`~labctl.errors.LabError`. The CLI is one such caller::

    from labctl.backends import open_backend
    from labctl.lab.config import load_lab
    from labctl.lab.plan import plan_lab
    from labctl.lab.state import LabState
    from labctl.ops.events import QuietEvents
    from labctl.ops.lifecycle import up

    plan = plan_lab(load_lab())
    with open_backend("libvirt") as backend:
        up(plan, backend, LabState.for_lab(plan.lab.name), QuietEvents())
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl.access.readiness import last_error, parse_phases
from labctl.backends.base import Backend, BaseImage, LabObject, NodeRequest
from labctl.errors import ConfigError, StateError
from labctl.guest.seed import build_seed_iso, render_seed
from labctl.lab.accel import Accel, choose_accel
from labctl.lab.drift import plan_fingerprint, unappliable_changes
from labctl.lab.identity import network_tag, node_tag
from labctl.lab.lock import lab_lock
from labctl.lab.model import Lab
from labctl.lab.plan import NodePlan, Plan
from labctl.lab.state import LabState
from labctl.ops import grow
from labctl.ops.events import Events
from labctl.ops.ready import await_ready, route_to
from labctl.pki.secrets import ensure_secrets

Clock = Callable[[], float]
Sleep = Callable[[float], None]
SupplyImage = Callable[[Lab], BaseImage]
SupplyCni = Callable[[Plan], str]  # the lab's CNI manifest, fetched, verified and adapted
Gate = Callable[[Plan, Backend], None]
STOP_TIMEOUT = 120  # seconds of ACPI shutdown before a node is forced off


@dataclass(frozen=True)
class NodeStatus:
    name: str
    role: str
    domain: str
    state: str
    addresses: tuple[str, ...]
    phase: str = "-"  # the last bootstrap phase its console shows ("-": not readable here)
    error: str | None = None  # after a failure, the node's own line: "STEP: MESSAGE"


@dataclass(frozen=True)
class UpResult:
    changes: int
    lab_id: str
    ready: bool  # every node reported ready (False with wait=False)


def choose_lab_accel(plan: Plan, backend: Backend, events: Events) -> Accel:
    """``accel:`` of lab.yaml resolved against what the hypervisor offers; TCG (or a doubtful choice) is
    said out loud."""
    accel = choose_accel(plan.lab.accel, backend.accel_facts())
    if accel.emulated or accel.doubtful:
        events.note(f"accelerator: {accel.reason}")
    return accel


def up(plan: Plan, backend: Backend, state: LabState, events: Events, *, supply_image: SupplyImage,
       supply_cni: SupplyCni | None = None, gate: Gate | None = None, wait: bool = True,
       timeout: float | None = None, retry_failed: bool = False,
       clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> UpResult:
    """Create what is missing, start what is stopped, and (``wait``) wait until every node is ready,
    then remove the seeds. ``gate`` refuses a host that cannot run the lab (the doctor's checks),
    ``supply_image`` hands over the verified base image (downloading it when needed), ``supply_cni``
    the CNI manifest master1's seed carries. The accelerator enters here: `auto` is resolved against
    the hypervisor, and the plan's budget table (seeds, waits, the default ``timeout``) follows it.
    ``retry_failed`` runs the bootstrap of nodes that failed again (`labctl up --retry-failed`)."""
    check_state(plan, backend, state)
    accel = choose_lab_accel(plan, backend, events)
    plan = plan.with_accel(accel.kind)
    if gate is not None:
        gate(plan, backend)
    if supply_cni is not None:
        plan = plan.with_cni_manifest(supply_cni(plan))
    image = supply_image(plan.lab)
    with lab_lock(state, "up", clock=clock, sleep=sleep):
        applied = apply(plan, backend, state, image, accel, events)
        if retry_failed:
            from labctl.ops.retry import retry_failed as retry

            retry(plan, backend, state, plan.nodes, events, applied.offsets, clock=clock, sleep=sleep)
        if not wait:
            if applied.pending:
                events.note(f"the running lab learns of its {len(applied.growth.added)} new node(s) once it is ready: "
                            "run `labctl up` (without --no-wait) to finish")
            return UpResult(applied.changes, applied.lab_id, ready=False)
        timeout = timeout or plan.budget.host_timeout
        deadline = clock() + timeout
        if applied.pending:  # the lab as it was must be up before it can learn of its new nodes
            earlier = [node for node in plan.nodes if node not in applied.growth.added]
            await_ready(plan, backend, state, earlier, applied.offsets, events, timeout=timeout, clock=clock,
                        sleep=sleep)
            grow.refresh(plan, state, route_to(plan, backend, state), applied.pending, events.note)
        await_ready(plan, backend, state, plan.nodes, applied.offsets, events, timeout=max(deadline - clock(), 1.0),
                    clock=clock, sleep=sleep)
        remove_seeds(plan, backend, applied.lab_id, events)
    return UpResult(applied.changes, applied.lab_id, ready=True)


@dataclass(frozen=True)
class Applied:
    changes: int
    lab_id: str
    offsets: dict[str, int]  # where each node's console log stood before this run started it
    growth: grow.Growth
    pending: tuple[str, ...]  # what the running lab must learn of its new nodes (labctl.ops.grow)


def apply(plan: Plan, backend: Backend, state: LabState, image: BaseImage, accel: Accel,
          events: Events) -> Applied:
    """The plan's objects, ensured one step at a time."""
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
    growth = grow.plan_growth(plan, built if existing else None)
    state.save_record({**state.record(), "name": lab.name, "id": lab_id, "image_digest": image.digest,
                       "built": wanted})
    pending = grow.prepare(plan, state, growth)  # before the seeds: they may need a fresh token
    changes = 0

    def step(what: str, did: str) -> None:
        nonlocal changes
        changes += did not in ("exists", "running")
        events.step(what, did)

    step(f"base image {image.digest[:19]}…", backend.ensure_base_image(image))
    for net in plan.networks:
        step(f"network {net.name}", backend.ensure_network(net, network_tag(lab.name, lab_id)))
    seeds = seed_isos(plan, state)
    for node in plan.nodes:
        request = NodeRequest(node, node_tag(lab.name, lab_id, node.role, node.name), seeds[node.name], accel, image)
        step(f"node {node.name}", backend.ensure_node(request))
    offsets = start_nodes(plan.nodes, backend, step)
    return Applied(changes, lab_id, offsets, growth, pending)


def lab_id_for(plan: Plan, backend: Backend, state: LabState, ids: set[str] | None = None) -> str:
    """The lab's id: the state record's, else a new one. ``ids`` are the tags' ids when the caller has
    already listed them; objects whose tags disagree with the state are refused (:func:`check_state`)."""
    ids = backend.find_lab_ids(plan.lab.name) if ids is None else ids
    check_state(plan, backend, state, ids)
    return state.lab_id()


def check_state(plan: Plan, backend: Backend, state: LabState, ids: set[str] | None = None) -> None:
    """The lab's state directory and the hypervisor's tagged objects belong to one lab, or a one-line
    refusal naming both: old machines never get new secrets (their keys, host keys and CAs live in the
    state directory). Reads only: nothing is created when it refuses."""
    ids = backend.find_lab_ids(plan.lab.name) if ids is None else ids
    recorded = state.record().get("id")
    if not ids or recorded in ids:
        return
    found = ", ".join(sorted(ids))
    if not recorded:
        raise StateError(f"lab {plan.lab.name}: {backend.target} holds its objects (lab id {found}) but its state "
                         f"directory {state.root} is missing or has no lab.json",
                         "restore that directory (its keys and CAs are the ones the machines hold), "
                         f"or remove the objects with `labctl --name {plan.lab.name} destroy --yes`")
    raise StateError(f"lab {plan.lab.name}: {backend.target} holds objects of lab id {found} but the state "
                     f"directory {state.root} is of lab id {recorded}",
                     f"restore the state directory of lab id {found}, "
                     f"or remove the objects with `labctl --name {plan.lab.name} destroy --yes`")


def seed_isos(plan: Plan, state: LabState) -> dict[str, bytes]:
    """Every node's seed ISO, by node name."""
    secrets = ensure_secrets(state, plan)
    return {node.name: build_seed_iso(render_seed(plan, node, secrets)) for node in plan.nodes}


def start_nodes(nodes: Sequence[NodePlan], backend: Backend, step: Callable[[str, str], None]) -> dict[str, int]:
    """Start the stopped ones of ``nodes``, in order; where each console log stood before its start.

    Readiness reads a started node's log from there on (the phases of this boot); a node that was
    already running gets 0, so the last phase it printed stands, and so does every node of a backend
    that starts its logs afresh at each boot."""
    offsets = {}
    for node in nodes:
        before = 0 if backend.console_log_per_boot else _size(backend.console_log(node))
        did = backend.start_node(node)
        offsets[node.name] = before if did == "started" else 0
        step(f"start {node.name}", did)
    return offsets


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:  # not written yet, or not readable here (readiness then asks over ssh)
        return 0


def remove_seeds(plan: Plan, backend: Backend, lab_id: str, events: Events) -> None:
    """Once every node is ready its seed (which holds secrets) is no longer needed: remove it."""
    for node in plan.nodes:
        if backend.remove_seed(node, node_tag(plan.lab.name, lab_id, node.role, node.name)) == "removed":
            events.note(f"seed of {node.name}: removed")


def start(plan: Plan, backend: Backend, state: LabState, nodes: Sequence[NodePlan], events: Events, *,
          wait: bool = True, timeout: float | None = None, clock: Clock = time.monotonic,
          sleep: Sleep = time.sleep) -> None:
    """Start ``nodes`` (in boot order) and (``wait``) wait until they are ready again (by default for the
    budget table's host timeout under the hypervisor's accelerator)."""
    check_state(plan, backend, state)
    if plan.accel is None:
        plan = plan.with_accel(choose_lab_accel(plan, backend, events).kind)
    with lab_lock(state, "start", clock=clock, sleep=sleep):
        offsets = start_nodes(nodes, backend, events.step)
        if wait:
            await_ready(plan, backend, state, nodes, offsets, events, timeout=timeout or plan.budget.host_timeout,
                        clock=clock, sleep=sleep)


def stop(plan: Plan, backend: Backend, state: LabState, nodes: Sequence[NodePlan], events: Events, *,
         timeout: float = STOP_TIMEOUT, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
    """Shut ``nodes`` down gracefully, in reverse boot order (workers first, the gateway last)."""
    with lab_lock(state, "stop", clock=clock, sleep=sleep):
        for node in reversed(nodes):
            events.step(f"stop {node.name}", backend.stop_node(node, timeout, clock, sleep))


def lab_ids(lab: str, backend: Backend, state: LabState) -> set[str]:
    ids = backend.find_lab_ids(lab)
    recorded = state.record().get("id")
    return ids | {str(recorded)} if recorded else ids


def status(plan: Plan, backend: Backend, state: LabState) -> list[NodeStatus]:
    """Each planned node's state and addresses; tagged nodes no longer planned too."""
    objects = backend.lab_objects(plan.lab.name, lab_ids(plan.lab.name, backend, state))
    domains = {obj.name: obj for obj in objects if obj.kind == "domain"}
    rows = []
    for node in plan.nodes:
        found = domains.pop(node.domain_name, None)
        addresses = tuple(str(nic.address.ip) for nic in node.nics)
        phase, error = _console_phase(backend.console_log(node), node.name) if found else ("-", None)
        rows.append(NodeStatus(node.name, node.role, node.domain_name, found.state if found else "missing", addresses,
                               phase, error))
    for extra in domains.values():
        tag = extra.tag
        rows.append(NodeStatus(tag.node if tag else extra.name, tag.role if tag else "?", extra.name,
                               f"{extra.state} (not in plan)", ()))
    return rows


def _console_phase(path: Path | None, name: str) -> tuple[str, str | None]:
    """The node's last phase in its console log and, after a failure, its own line ("-": not readable)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace") if path is not None else None
    except OSError:
        text = None
    if text is None:
        return "-", None
    events = parse_phases(text, name)
    if not events:
        return "booting", None
    last = events[-1]
    return (f"failed {last.step}" if last.step else last.phase), last_error(name, text)


_REMOVAL_ORDER = {"domain": 0, "volume": 1, "network": 2}


def destroy(lab: str, backend: Backend, state: LabState, events: Events, *, clock: Clock = time.monotonic,
            sleep: Sleep = time.sleep) -> list[LabObject]:
    """Remove every object tagged with ``lab`` and the lab's state; the shared base image stays."""
    with lab_lock(state, "destroy", clock=clock, sleep=sleep):
        objects = backend.lab_objects(lab, lab_ids(lab, backend, state))
        for obj in sorted(objects, key=lambda o: (_REMOVAL_ORDER[o.kind], o.name)):
            backend.remove(obj)
            events.note(f"removed {obj.kind} {obj.name}")
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
