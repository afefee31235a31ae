"""The validated lab model: frozen dataclasses, built only by :mod:`labctl.lab.config`."""

from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from labctl.lab.catalog import ImageSpec

ROLES = ("gateway", "lb", "etcd", "master", "worker")  # etcd: members of an external etcd (count 0 if stacked)
ETCD_TOPOLOGIES = ("stacked", "external")
BACKEND_NAMES = ("libvirt", "virtualbox")  # the names labctl.backends opens


@dataclass(frozen=True)
class RoleSpec:
    role: str
    count: int
    cpus: int
    memory: int  # MiB
    disk: int  # GiB


@dataclass(frozen=True)
class NetworkSpec:
    key: str  # "nat" or "internal"
    cidr: IPv4Network
    mode: str  # "nat", "isolated", "bridge" or "intnet" (VirtualBox only: no host side at all)
    bridge: str | None = None  # host bridge (VirtualBox: host interface), bridge mode only


@dataclass(frozen=True)
class ManifestSource:
    """Where a CNI manifest comes from (a URL or a file on the host) and its SHA-256."""

    sha256: str
    url: str | None = None
    path: Path | None = None

    @property
    def where(self) -> str:
        return self.url or str(self.path)


@dataclass(frozen=True)
class AptMirror:
    """The Debian mirror every node's apt reads instead of the image's own sources."""

    url: str
    updates: bool = False  # <suite>-updates from the same mirror
    security: str | None = None  # a mirror of debian-security for <suite>-security


@dataclass(frozen=True)
class KubernetesSpec:
    version: str
    pod_cidr: IPv4Network
    service_cidr: IPv4Network
    cni: str
    etcd: str
    enforce_minimums: bool
    cni_manifest: ManifestSource | None = None  # overrides the CNI catalog's pinned manifest
    apt_url: str | None = None  # the Kubernetes package repository (None: upstream's for the minor)
    apt_key_url: str | None = None  # its signing key, fetched by the node (None: <apt_url>Release.key)
    apt_key: str | None = None  # or the armored key itself, read from a file on the host


@dataclass(frozen=True)
class Lab:
    name: str
    domain: str
    user: str
    accel: str
    image: ImageSpec
    apt_mirror: AptMirror | None
    nat: NetworkSpec
    internal: NetworkSpec
    roles: tuple[RoleSpec, ...]
    kubernetes: KubernetesSpec
    backend: str = "libvirt"

    def role(self, name: str) -> RoleSpec:
        return next(spec for spec in self.roles if spec.role == name)
