"""The validated lab model: frozen dataclasses, built only by :mod:`labctl.lab.config`."""

from dataclasses import dataclass
from ipaddress import IPv4Network

from labctl.lab.catalog import ImageSpec

ROLES = ("gateway", "lb", "etcd", "master", "worker")  # etcd: members of an external etcd (count 0 if stacked)
ETCD_TOPOLOGIES = ("stacked", "external")
BACKEND_NAMES = ("libvirt",)  # the names labctl.backends opens


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
    mode: str  # "nat", "isolated" or "bridge"
    bridge: str | None = None  # host bridge, bridge mode only


@dataclass(frozen=True)
class KubernetesSpec:
    version: str
    pod_cidr: IPv4Network
    service_cidr: IPv4Network
    cni: str
    etcd: str
    enforce_minimums: bool
    cni_manifest: tuple[str, str] | None = None  # (url, sha256) overriding the CNI catalog's pinned manifest


@dataclass(frozen=True)
class Lab:
    name: str
    domain: str
    user: str
    accel: str
    image: ImageSpec
    apt_mirror: str | None
    nat: NetworkSpec
    internal: NetworkSpec
    roles: tuple[RoleSpec, ...]
    kubernetes: KubernetesSpec
    backend: str = "libvirt"

    def role(self, name: str) -> RoleSpec:
        return next(spec for spec in self.roles if spec.role == name)
