"""An in-memory backend for unit tests of the operations (`up`, `status`, `stop`, `start`, `destroy`).

It keeps what a hypervisor would hold in dicts, records every call, and passes the same contract suite
as the real backends (tests/backends/test_contract.py). A started node can "boot": it appends its
`ready` phase to its console log, as a real node's bootstrap would print it on the serial console.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from labctl.backends.base import (
    Backend,
    BaseImage,
    Clock,
    HypervisorFacts,
    LabObject,
    NodeRequest,
    Reach,
    Sleep,
)
from labctl.errors import BackendError
from labctl.lab.accel import Accel, HostFacts
from labctl.lab.identity import Tag
from labctl.lab.plan import NetworkPlan, NodePlan, Plan


@dataclass
class FakeDomain:
    tag: Tag
    running: bool = False
    seed: bool = True
    request: NodeRequest | None = None


@dataclass
class FakeBackend(Backend):
    console_dir: Path | None = None
    local: bool = True
    boots: bool = True  # a started node prints `ready` on its console
    domains: dict[str, FakeDomain] = field(default_factory=dict)
    networks: dict[str, tuple[Tag, bool]] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)
    bases: set[str] = field(default_factory=set)
    calls: list[tuple[object, ...]] = field(default_factory=list)
    closed: bool = False

    name = "fake"

    @classmethod
    def open(cls, target: str | None = None) -> FakeBackend:
        return cls()

    @classmethod
    def reach(cls, target: str | None) -> Reach:
        return Reach(local=target != "remote", jump=None)

    def close(self) -> None:
        self.closed = True

    @property
    def target(self) -> str:
        return "fake:///" if self.local else "remote"

    def accel_facts(self) -> HostFacts:
        return HostFacts(kvm_device=False, modules=frozenset())

    def doctor_facts(self, plan: Plan) -> HypervisorFacts:
        mine = [node for node in plan.nodes if node.domain_name in self.domains]
        return HypervisorFacts(self.target, self.local, accel=self.accel_facts(), mem_available_mib=1 << 20,
                               disk_free=1 << 40, defined=frozenset(node.name for node in mine),
                               running=frozenset(n.name for n in mine if self.domains[n.domain_name].running),
                               networks=())

    # --- applying the plan ------------------------------------------------------------------

    def find_lab_ids(self, lab: str) -> set[str]:
        tags = [d.tag for d in self.domains.values()] + [tag for tag, _ in self.networks.values()]
        return {tag.lab_id for tag in tags if tag.lab == lab}

    def ensure_base_image(self, image: BaseImage) -> str:
        self.calls.append(("base", image.digest))
        if image.digest in self.bases:
            return "exists"
        self.bases.add(image.digest)
        return "imported"

    def ensure_network(self, net: NetworkPlan, tag: Tag) -> str:
        self.calls.append(("network", net.name))
        found = self.networks.get(net.name)
        if found is not None and found[0].lab != tag.lab:
            raise BackendError(f"network {net.name} exists but is not part of lab {tag.lab}")
        if found is None:
            self.networks[net.name] = (tag, True)
            return "created"
        if not found[1]:
            self.networks[net.name] = (found[0], True)
            return "started"
        return "exists"

    def ensure_node(self, request: NodeRequest) -> str:
        node, tag = request.node, request.tag
        self.calls.append(("node", node.name))
        if request.image.digest not in self.bases:
            raise BackendError(f"base image {request.image.digest} is not imported")
        found = self.domains.get(node.domain_name)
        if found is not None and found.tag.lab != tag.lab:
            raise BackendError(f"domain {node.domain_name} exists but is not part of lab {tag.lab}")
        disk, seed = _volumes(tag, node)
        did = "exists"
        if disk not in self.volumes:
            self.volumes.add(disk)
            did = "created"
        if found is None:
            self.volumes.add(seed)
            self.domains[node.domain_name] = FakeDomain(tag, request=request)
            did = "created"
        return did

    def start_node(self, node: NodePlan) -> str:
        self.calls.append(("start", node.name))
        domain = self.domains.get(node.domain_name)
        if domain is None:
            raise BackendError(f"domain {node.domain_name} is not defined", "run `labctl up`")
        if domain.running:
            return "running"
        domain.running = True
        log = self.console_log(node)
        if log is not None and self.boots:
            with log.open("a") as out:
                out.write(f"labctl-phase: {node.name} ready\n")
        return "started"

    def stop_node(self, node: NodePlan, timeout: float, clock: Clock, sleep: Sleep) -> str:
        self.calls.append(("stop", node.name, timeout))
        domain = self.domains.get(node.domain_name)
        if domain is None:
            return "missing"
        if not domain.running:
            return "stopped"
        domain.running = False
        return "shut down"

    def remove_seed(self, node: NodePlan, tag: Tag) -> str:
        _, seed = _volumes(tag, node)
        domain = self.domains.get(node.domain_name)
        did = "absent"
        if domain is not None and domain.seed:
            domain.seed, did = False, "removed"
        if seed in self.volumes:
            self.volumes.discard(seed)
            did = "removed"
        return did

    def definitions(self, plan: Plan, lab_id: str, accel: Accel, image: BaseImage) -> dict[str, str]:
        files = {f"networks/{net.name}.json": json.dumps({"name": net.name, "cidr": str(net.cidr)})
                 for net in plan.networks}
        for node in plan.nodes:
            files[f"{node.name}/domain.json"] = json.dumps({"name": node.domain_name, "accel": accel.kind,
                                                            "image": image.digest, "lab_id": lab_id})
        return files

    # --- inventory and access ---------------------------------------------------------------

    def lab_objects(self, lab: str, lab_ids: set[str]) -> list[LabObject]:
        found = [LabObject("domain", name, "running" if d.running else "shut off", d.tag)
                 for name, d in self.domains.items() if d.tag.lab == lab]
        found += [LabObject("network", name, "active" if active else "inactive", tag)
                  for name, (tag, active) in self.networks.items() if tag.lab == lab]
        found += [LabObject("volume", name, "present") for name in sorted(self.volumes)
                  if name.startswith(f"{lab}-") and any(f"-{lab_id}" in name for lab_id in lab_ids)]
        return found

    def remove(self, obj: LabObject) -> None:
        self.calls.append(("remove", obj.kind, obj.name))
        {"domain": self.domains, "network": self.networks}.get(obj.kind, {}).pop(obj.name, None)
        self.volumes.discard(obj.name)

    def console_log(self, node: NodePlan) -> Path | None:
        return self.console_dir / f"{node.domain_name}.console.log" if self.console_dir and self.local else None

    def console_argv(self, node: NodePlan) -> list[str]:
        return ["fake-console", node.domain_name]


def _volumes(tag: Tag, node: NodePlan) -> tuple[str, str]:
    return f"{tag.lab}-{node.name}-{tag.lab_id}.disk", f"{tag.lab}-{node.name}-{tag.lab_id}-seed.iso"
