"""The small interface every hypervisor backend implements (libvirt now, VirtualBox next)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from labctl.backends.libvirt.xml import Tag
from labctl.lab.plan import NetworkPlan, NodePlan

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class BaseImage:
    """A verified image file on the host, as the cache hands it to a backend."""

    path: Path
    digest: str  # "sha512:<hex>" or "sha256:<hex>"
    format: str  # "qcow2" or "raw"
    kernel: Path | None = None  # for images booted by direct kernel boot
    initrd: Path | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class NodeRequest:
    """Everything a backend needs to create one node."""

    node: NodePlan
    tag: Tag
    seed_iso: bytes
    domain_type: str  # "kvm" or "qemu" (TCG)


@dataclass(frozen=True)
class LabObject:
    kind: str  # "domain", "network" or "volume"
    name: str
    state: str  # "running", "shut off", "active", "inactive", "present", …
    tag: Tag | None = None


class Backend(Protocol):
    """What `up`, `status` and `destroy` ask of a hypervisor. Every method is idempotent;
    ``ensure_*`` and ``start_node`` return a short word for what they did ("created", "exists", …)."""

    name: str

    def find_lab_ids(self, lab: str) -> set[str]:
        """Ids found in the tags of the lab's existing objects."""
        ...

    def ensure_base_image(self, image: BaseImage) -> str: ...

    def ensure_network(self, net: NetworkPlan, tag: Tag) -> str: ...

    def ensure_node(self, request: NodeRequest) -> str: ...

    def start_node(self, node: NodePlan) -> str: ...

    def lab_objects(self, lab: str, lab_ids: set[str]) -> list[LabObject]:
        """Every object tagged with ``lab`` (volumes: named with one of ``lab_ids``)."""
        ...

    def remove(self, obj: LabObject) -> None: ...

    def stop_node(self, node: NodePlan, timeout: float, clock: Clock, sleep: Sleep) -> str:
        """Graceful shutdown bounded by ``timeout`` seconds, then forced."""
        ...

    def remove_seed(self, node: NodePlan, tag: Tag) -> str:
        """Detach and delete the node's seed medium (it holds secrets)."""
        ...

    def console_log(self, node: NodePlan) -> Path | None:
        """The node's serial console log, where the host can read it."""
        ...
