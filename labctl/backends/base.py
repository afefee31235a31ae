"""The interface every hypervisor backend implements, and the neutral data it takes and returns.

A backend applies the plan: it imports the verified base image once, defines the lab's networks
and nodes, starts and stops them, and lists and removes what carries the lab's tag. Everything a
caller needs from a hypervisor is declared here; nothing outside a backend's own folder touches
its library (libvirt-python, VBoxManage) or its private members. Each backend class names
:class:`Backend` as its base, so mypy checks it against this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from labctl.errors import BackendError
from labctl.lab.accel import Accel, HostFacts
from labctl.lab.identity import Tag
from labctl.lab.plan import NetworkPlan, NodePlan, Plan

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
    """Everything a backend needs to create one node: nothing is taken from an earlier call."""

    node: NodePlan
    tag: Tag
    seed_iso: bytes
    accel: Accel
    image: BaseImage  # the base its disk is a copy-on-write overlay of (imported by ensure_base_image)


@dataclass(frozen=True)
class LabObject:
    kind: str  # "domain" (a node's VM), "network" or "volume" (a disk or seed medium)
    name: str
    state: str  # "running", "shut off", "active", "inactive", "present", …
    tag: Tag | None = None
    id: str = ""  # the hypervisor's own identifier where names are not unique (VirtualBox: a UUID)


@dataclass(frozen=True)
class Reach:
    """How the host reaches a lab on this hypervisor: directly (the internal network is on this host),
    and through which first hop (the hypervisor host of a remote connection), if any."""

    local: bool
    jump: str | None = None


@dataclass(frozen=True)
class ForeignNetwork:
    """A network the hypervisor holds, with the lab in its tag (None: not labctl's) and its ranges."""

    name: str
    lab: str | None
    cidrs: tuple[IPv4Network, ...]


@dataclass(frozen=True)
class Tool:
    """A program the backend needs on the hypervisor host; ``present`` None when not checkable."""

    name: str
    present: bool | None
    purpose: str
    install: str
    required: bool = True  # False: `up` goes ahead without it (doctor warns)


@dataclass(frozen=True)
class HypervisorFacts:
    """What ``labctl doctor`` learns from the hypervisor; None means "could not be checked"."""

    target: str  # what was connected to (a libvirt URI, the VirtualBox installation)
    local: bool
    accel: HostFacts | None = None
    tools: tuple[Tool, ...] = ()
    mem_available_mib: int | None = None  # None: ask the host itself (a local libvirt)
    disk_free: int | None = None  # bytes free where the nodes' disks go
    defined: frozenset[str] = frozenset()  # the lab's nodes that exist
    running: frozenset[str] = frozenset()  # … and run
    networks: tuple[ForeignNetwork, ...] | None = None
    foreign: tuple[str, ...] = ()  # "domain k8s-master1": the lab's names, not tagged as the lab's
    own_devices: frozenset[str] = frozenset()  # host interfaces the lab's own networks use
    bridges: frozenset[str] | None = None  # what bridge mode can join; None: the host's Linux bridges
    error: str | None = None  # set when the hypervisor answered only in part


class Backend(ABC):
    """What `up`, `status`, `stop`, `start`, `destroy`, `render` and `doctor` ask of a hypervisor.

    Opened by :func:`labctl.backends.open_backend`; a context manager that closes its connection.
    Every ``ensure_*`` is idempotent and returns a short word for what it did ("created", "exists", …).
    """

    name: ClassVar[str]
    # True where the hypervisor starts each node's console log afresh at every boot (VirtualBox), so a
    # boot's phases are read from its start, not from where the log stood before.
    console_log_per_boot: ClassVar[bool] = False

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    @classmethod
    @abstractmethod
    def open(cls, target: str | None = None) -> Backend:
        """Connect to the hypervisor (``target``: its address, e.g. a libvirt URI; None: the default).
        Raises :class:`~labctl.errors.BackendError` with a fix when it cannot."""

    @classmethod
    def unconnected(cls, target: str | None = None) -> Backend:
        """A backend not connected to its hypervisor, for `labctl render` on a host where the hypervisor
        is not running: :meth:`accel_facts` and :meth:`definitions` answer with what a fresh host would
        get. A backend that cannot say that without its hypervisor raises
        :class:`~labctl.errors.BackendError` (the default)."""
        raise BackendError(f"the {cls.name} backend needs its hypervisor to render its definitions",
                           "start it, or run `labctl doctor` to see what is missing")

    @classmethod
    @abstractmethod
    def reach(cls, target: str | None) -> Reach:
        """How the host reaches labs of ``target`` (needs no connection)."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def target(self) -> str:
        """What this backend is connected to, for messages (a libvirt URI, "VirtualBox 7.2.4")."""

    @abstractmethod
    def accel_facts(self) -> HostFacts:
        """The accelerators the hypervisor host offers, for :func:`labctl.lab.accel.choose_accel`."""

    @abstractmethod
    def doctor_facts(self, plan: Plan) -> HypervisorFacts: ...

    # --- applying the plan ------------------------------------------------------------------

    @abstractmethod
    def find_lab_ids(self, lab: str) -> set[str]:
        """Ids found in the tags of the lab's existing objects."""

    @abstractmethod
    def ensure_base_image(self, image: BaseImage) -> str:
        """Import ``image`` once per digest, shared by every lab (never removed by destroy)."""

    @abstractmethod
    def ensure_network(self, net: NetworkPlan, tag: Tag) -> str: ...

    @abstractmethod
    def ensure_node(self, request: NodeRequest) -> str:
        """Define the node with its disk on ``request.image`` (imported first) and its seed attached."""

    @abstractmethod
    def start_node(self, node: NodePlan) -> str: ...

    @abstractmethod
    def stop_node(self, node: NodePlan, timeout: float, clock: Clock, sleep: Sleep) -> str:
        """Graceful shutdown bounded by ``timeout`` seconds, then forced."""

    @abstractmethod
    def remove_seed(self, node: NodePlan, tag: Tag) -> str:
        """Detach and delete the node's seed medium (it holds secrets)."""

    @abstractmethod
    def definitions(self, plan: Plan, lab_id: str, accel: Accel, image: BaseImage) -> dict[str, str]:
        """What ensure_network/ensure_node would define, as text files by relative name (`labctl render`)."""

    # --- inventory and access ---------------------------------------------------------------

    @abstractmethod
    def lab_objects(self, lab: str, lab_ids: set[str]) -> list[LabObject]:
        """Every object tagged with ``lab`` (media without tags: named with one of ``lab_ids``)."""

    @abstractmethod
    def remove(self, obj: LabObject) -> None: ...

    @abstractmethod
    def console_log(self, node: NodePlan) -> Path | None:
        """The node's serial console log, where this host can read it; None where it cannot."""

    @abstractmethod
    def console_argv(self, node: NodePlan) -> list[str]:
        """The command that attaches this terminal to the node's serial console."""
