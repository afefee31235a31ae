"""libvirt backend: applies the plan through libvirt-python. Thin: XML comes from
:mod:`labctl.backends.libvirt.xml`, what ``doctor`` sees from :mod:`labctl.backends.libvirt.facts`."""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import libvirt

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
from labctl.backends.libvirt.xml import DomainMedia, domain_xml, network_xml, pool_xml, read_tag, volume_xml
from labctl.errors import BackendError
from labctl.lab.accel import Accel, HostFacts, read_host_facts
from labctl.lab.identity import Tag, media_pattern, network_tag, node_tag
from labctl.lab.lock import host_lock
from labctl.lab.plan import NetworkPlan, NodePlan, Plan
from labctl.paths import cache_root

POOL_NAME = "labctl"
DEFAULT_POOL_DIR = "/var/lib/libvirt/images/labctl"
DEFAULT_CONSOLE_DIR = "/var/log/libvirt/qemu"
UPLOAD_CHUNK = 1 << 20
T = TypeVar("T")

_CONNECT_HINT = (
    "is libvirtd (or virtqemud) running, is its socket readable by you (group libvirt), "
    "and is the URI right (--connect, LIBVIRT_DEFAULT_URI)?"
)


def default_uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"


def uri_is_local(uri: str) -> bool:
    """True for a libvirt URI on this host (``qemu:///system``), False for ``qemu+ssh://host/system``."""
    return not urlsplit(uri).netloc


def hypervisor_hop(uri: str) -> str | None:
    """``[user@]host[:port]`` of an ssh-transport libvirt URI: the first hop towards a remote lab."""
    parts = urlsplit(uri)
    if not parts.netloc or not parts.scheme.endswith("+ssh") or not parts.hostname:
        return None
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{user}{parts.hostname}{port}"


def _silence(_ctx: object, _err: object) -> None:
    """libvirt's error handler: errors are raised as libvirtError, never printed by libvirt."""


def _error(what: str, err: libvirt.libvirtError) -> BackendError:
    message = " ".join((err.get_error_message() or str(err)).split())
    return BackendError(f"{what}: {message}")


@contextmanager
def translated(what: str) -> Iterator[None]:
    """libvirt errors inside become one-line :class:`BackendError`s naming ``what`` was being done."""
    try:
        yield
    except libvirt.libvirtError as err:
        raise _error(what, err) from err


def _missing(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
    )


def lookup(fn: Callable[[str], T], name: str, what: str) -> T | None:
    """``fn(name)``, or None when libvirt says there is no such object."""
    try:
        return fn(name)
    except libvirt.libvirtError as err:
        if _missing(err):
            return None
        raise _error(f"looking up {what} {name}", err) from err


def volume_names(lab: str, node: str, lab_id: str) -> tuple[str, str]:
    """The overlay and seed volume names of a node; the lab id in the name is the volumes' tag
    (libvirt volumes carry no metadata)."""
    return f"{lab}-{node}-{lab_id}.qcow2", f"{lab}-{node}-{lab_id}-seed.iso"


def base_volume_name(image: BaseImage, suffix: str = ".qcow2") -> str:
    algo, _, hexdigest = image.digest.partition(":")
    return f"labctl-base-{algo}-{hexdigest[:24]}{suffix}"


class LibvirtBackend(Backend):
    name = "libvirt"

    def __init__(self, conn: libvirt.virConnect | None, pool_dir: str | None = None, console_dir: str | None = None,
                 uri: str | None = None):
        self._conn = conn
        self._uri = uri
        self.pool_dir = pool_dir or os.environ.get("LABCTL_POOL_DIR") or DEFAULT_POOL_DIR
        self.console_dir = console_dir or os.environ.get("LABCTL_CONSOLE_DIR") or DEFAULT_CONSOLE_DIR

    @classmethod
    def open(cls, target: str | None = None) -> LibvirtBackend:
        from labctl.backends.libvirt.facts import socket_fix

        uri = target or default_uri()
        libvirt.registerErrorHandler(_silence, None)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as err:
            hint = (socket_fix(uri) if uri_is_local(uri) else "") or _CONNECT_HINT
            raise BackendError(f"cannot connect to libvirt at {uri}: {' '.join(str(err).split())}", hint) from err
        return cls(conn)

    @classmethod
    def unconnected(cls, target: str | None = None) -> LibvirtBackend:
        uri = target or default_uri()
        if not uri_is_local(uri):
            raise BackendError(f"cannot render for {uri} without connecting to it", _CONNECT_HINT)
        return cls(None, uri=uri)

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            raise BackendError(f"not connected to libvirt at {self._uri}", "start libvirt and run the command again")
        return self._conn

    @classmethod
    def reach(cls, target: str | None) -> Reach:
        uri = target or default_uri()
        return Reach(uri_is_local(uri), hypervisor_hop(uri))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    @property
    def target(self) -> str:
        return str(self._conn.getURI()) if self._conn is not None else str(self._uri)

    @property
    def is_local(self) -> bool:
        return uri_is_local(self.target)

    def accel_facts(self) -> HostFacts:
        if self.is_local:
            return read_host_facts()
        try:
            self.conn.getDomainCapabilities(None, "x86_64", None, "kvm")
        except libvirt.libvirtError:
            return HostFacts(False, frozenset())
        return HostFacts(True, frozenset({"kvm", "kvm_intel"}))

    def doctor_facts(self, plan: Plan) -> HypervisorFacts:
        from labctl.backends.libvirt.facts import hypervisor_facts

        return hypervisor_facts(self, plan)

    # --- the pool and the base image ---------------------------------------------------------

    def pool(self) -> libvirt.virStoragePool:
        pool = lookup(self.conn.storagePoolLookupByName, POOL_NAME, "storage pool")
        with translated(f"preparing storage pool {POOL_NAME} at {self.pool_dir}"):
            if pool is None:
                pool = self.conn.storagePoolDefineXML(pool_xml(POOL_NAME, self.pool_dir), 0)
                pool.build(0)
                pool.setAutostart(1)
            if not pool.isActive():
                pool.create(0)
        return pool

    def _upload(self, pool: libvirt.virStoragePool, name: str, data_source: Path | bytes, fmt: str) -> None:
        size = data_source.stat().st_size if isinstance(data_source, Path) else len(data_source)
        with translated(f"uploading volume {name}"):
            vol = pool.createXML(volume_xml(name, size, fmt), 0)
            stream = self.conn.newStream(0)
            vol.upload(stream, 0, size, 0)
            if isinstance(data_source, Path):
                with data_source.open("rb") as handle:
                    stream.sendAll(lambda _st, nbytes, fh: fh.read(min(nbytes, UPLOAD_CHUNK)), handle)
            else:
                stream.send(data_source)
            stream.finish()

    def ensure_base_image(self, image: BaseImage) -> str:
        """Upload the verified image once per digest; a marker volume says the upload completed."""
        pool = self.pool()
        marker = base_volume_name(image, ".complete")
        if lookup(pool.storageVolLookupByName, marker, "volume"):
            return "exists"
        # Two labs coming up at once share this volume: one uploads, the other then finds it.
        with host_lock(cache_root() / "locks" / f"base-{hashlib.sha256(self.conn.getURI().encode()).hexdigest()[:16]}"):
            if lookup(pool.storageVolLookupByName, marker, "volume"):
                return "exists"
            return self._import_base(pool, image, marker)

    def _import_base(self, pool: libvirt.virStoragePool, image: BaseImage, marker: str) -> str:
        files = [(base_volume_name(image), image.path, image.format)]
        if image.kernel:
            files.append((base_volume_name(image, ".vmlinuz"), image.kernel, "raw"))
        if image.initrd:
            files.append((base_volume_name(image, ".initrd"), image.initrd, "raw"))
        for name, path, fmt in files:
            self._delete_volume(pool, name)  # a half-uploaded one from an interrupted run
            self._upload(pool, name, path, fmt)
        self._upload(pool, marker, image.digest.encode(), "raw")
        with translated("refreshing storage pool"):
            pool.refresh(0)
        return "imported"

    def _delete_volume(self, pool: libvirt.virStoragePool, name: str) -> bool:
        vol = lookup(pool.storageVolLookupByName, name, "volume")
        if vol is None:
            return False
        with translated(f"deleting volume {name}"):
            vol.delete(0)
        return True

    # --- networks ----------------------------------------------------------------------------

    def _owned(self, obj: Any, kind: str, lab: str) -> Tag | None:
        with translated(f"reading {kind} {obj.name()}"):
            tag = read_tag(obj.XMLDesc(0))
        if tag is None or tag.lab != lab:
            raise BackendError(
                f"{kind} {obj.name()} exists but is not part of lab {lab}",
                "remove it or choose another lab name (--name)",
            )
        return tag

    def ensure_network(self, net: NetworkPlan, tag: Tag) -> str:
        found = lookup(self.conn.networkLookupByName, net.name, "network")
        did = "exists"
        with translated(f"creating network {net.name}"):
            if found is None:
                found = self.conn.networkDefineXML(network_xml(net, tag))
                did = "created"
            else:
                self._owned(found, "network", tag.lab)
            if not found.isActive():
                found.create()
                did = "started" if did == "exists" else did
            if not found.autostart():
                found.setAutostart(1)
        return did

    # --- domains -----------------------------------------------------------------------------

    def _volume_path(self, name: str) -> str:
        """Where a volume of the pool lives (or will): what libvirt reports for it, the same path
        `render` shows before the pool exists."""
        if self._conn is None:
            return str(Path(self.pool_dir) / name)
        pool = lookup(self.conn.storagePoolLookupByName, POOL_NAME, "storage pool")
        if pool is not None:
            target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")
            if target:
                return str(Path(target) / name)
        return str(Path(self.pool_dir) / name)

    def _domain_xml(self, node: NodePlan, tag: Tag, accel: Accel, image: BaseImage) -> str:
        disk, seed = volume_names(tag.lab, node.name, tag.lab_id)
        kernel = self._volume_path(base_volume_name(image, ".vmlinuz")) if image.kernel else None
        initrd = self._volume_path(base_volume_name(image, ".initrd")) if image.initrd else None
        console = str(Path(self.console_dir) / f"{node.domain_name}.console.log")
        media = DomainMedia(POOL_NAME, disk, seed, console, kernel, initrd, image.cmdline)
        return domain_xml(node, _network_names(tag.lab), tag, accel, media)

    def ensure_node(self, request: NodeRequest) -> str:
        node, tag = request.node, request.tag
        pool = self.pool()
        domain = lookup(self.conn.lookupByName, node.domain_name, "domain")
        if domain is not None:
            self._owned(domain, "domain", tag.lab)
        disk, seed = volume_names(tag.lab, node.name, tag.lab_id)
        did = "exists"
        if lookup(pool.storageVolLookupByName, disk, "volume") is None:
            self._create_overlay(pool, disk, node, request.image)
            did = "created"
        if domain is None:
            # The seed is (re)written only while no domain uses it: an interrupted run may have
            # left a partial one, and a running node must not see its seed change.
            self._delete_volume(pool, seed)
            self._upload(pool, seed, request.seed_iso, "raw")
            with translated(f"defining domain {node.domain_name}"):
                self.conn.defineXML(self._domain_xml(node, tag, request.accel, request.image))
            did = "created"
        return did

    def definitions(self, plan: Plan, lab_id: str, accel: Accel, image: BaseImage) -> dict[str, str]:
        lab = plan.lab.name
        files = {f"networks/{net.name}.xml": network_xml(net, network_tag(lab, lab_id)) for net in plan.networks}
        for node in plan.nodes:
            files[f"{node.name}/domain.xml"] = self._domain_xml(node, node_tag(lab, lab_id, node.role, node.name),
                                                                accel, image)
        return files

    def _create_overlay(self, pool: libvirt.virStoragePool, name: str, node: NodePlan, image: BaseImage) -> None:
        with translated(f"creating disk {name}"):
            base_vol = pool.storageVolLookupByName(base_volume_name(image))
            virtual = base_vol.info()[1]
            capacity = max(node.disk << 30, virtual)
            backing = (base_vol.path(), image.format)
            pool.createXML(volume_xml(name, capacity, "qcow2", backing), 0)

    def start_node(self, node: NodePlan) -> str:
        domain = lookup(self.conn.lookupByName, node.domain_name, "domain")
        if domain is None:
            raise BackendError(f"domain {node.domain_name} is not defined", "run `labctl up`")
        with translated(f"starting {node.domain_name}"):
            if domain.isActive():
                return "running"
            domain.create()
        return "started"

    def stop_node(self, node: NodePlan, timeout: float, clock: Clock, sleep: Sleep) -> str:
        """ACPI shutdown, waited for at most ``timeout`` seconds, then forced off."""
        domain = lookup(self.conn.lookupByName, node.domain_name, "domain")
        if domain is None:
            return "missing"
        with translated(f"stopping {node.domain_name}"):
            if not domain.isActive():
                return "stopped"
            domain.shutdown()
            deadline = clock() + timeout
            while clock() < deadline:
                if not domain.isActive():
                    return "shut down"
                sleep(1.0)
            domain.destroy()
        return "forced off"

    def remove_seed(self, node: NodePlan, tag: Tag) -> str:
        """Detach the seed disk (it holds secrets), live and persistently, and delete its volume."""
        _, seed = volume_names(tag.lab, node.name, tag.lab_id)
        domain = lookup(self.conn.lookupByName, node.domain_name, "domain")
        did = "absent"
        if domain is not None:
            with translated(f"detaching the seed of {node.domain_name}"):
                flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
                if domain.isActive():
                    flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
                for disk in ET.fromstring(domain.XMLDesc(0)).findall("devices/disk"):
                    source = disk.find("source")
                    if source is not None and source.get("volume") == seed:
                        domain.detachDeviceFlags(ET.tostring(disk, encoding="unicode"), flags)
                        did = "removed"
        if self._delete_volume(self.pool(), seed):
            did = "removed"
        return did

    def console_log(self, node: NodePlan) -> Path | None:
        return Path(self.console_dir) / f"{node.domain_name}.console.log" if self.is_local else None

    def console_argv(self, node: NodePlan) -> list[str]:
        return ["virsh", "-c", self.target, "console", node.domain_name]

    # --- inventory and removal ---------------------------------------------------------------

    def _tagged(self, objects: list[Any], lab: str) -> Iterator[tuple[Any, Tag]]:
        for obj in objects:
            try:
                tag = read_tag(obj.XMLDesc(0))
            except libvirt.libvirtError as err:
                if _missing(err):
                    continue  # removed while we listed
                raise _error(f"reading {obj.name()}", err) from err
            if tag is not None and tag.lab == lab:
                yield obj, tag

    def find_lab_ids(self, lab: str) -> set[str]:
        with translated("listing domains and networks"):
            objects = self.conn.listAllDomains(0) + self.conn.listAllNetworks(0)
        return {tag.lab_id for _, tag in self._tagged(objects, lab)}

    def lab_objects(self, lab: str, lab_ids: set[str]) -> list[LabObject]:
        with translated("listing lab objects"):
            domains = self.conn.listAllDomains(0)
            networks = self.conn.listAllNetworks(0)
            pool = lookup(self.conn.storagePoolLookupByName, POOL_NAME, "storage pool")
            if pool is not None and pool.isActive():
                pool.refresh(0)
            volumes = pool.listAllVolumes(0) if pool is not None and pool.isActive() else []
        found = [LabObject("domain", d.name(), _domain_state(d), tag) for d, tag in self._tagged(domains, lab)]
        found += [LabObject("network", n.name(), "active" if n.isActive() else "inactive", tag)
                  for n, tag in self._tagged(networks, lab)]
        pattern = media_pattern(lab, lab_ids, (".qcow2", "-seed.iso"))
        found += [LabObject("volume", v.name(), "present") for v in volumes if pattern and pattern.match(v.name())]
        return found

    def remove(self, obj: LabObject) -> None:
        with translated(f"removing {obj.kind} {obj.name}"):
            if obj.kind == "domain":
                domain = lookup(self.conn.lookupByName, obj.name, "domain")
                if domain is not None:
                    if domain.isActive():
                        domain.destroy()
                    domain.undefineFlags(_UNDEFINE_FLAGS)
            elif obj.kind == "network":
                network = lookup(self.conn.networkLookupByName, obj.name, "network")
                if network is not None:
                    if network.isActive():
                        network.destroy()
                    network.undefine()
            else:
                self._delete_volume(self.pool(), obj.name)


_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def _network_names(lab: str) -> dict[str, str]:
    """Network key -> libvirt network name, as the plan names them (<lab>-<key>)."""
    return {"nat": f"{lab}-nat", "internal": f"{lab}-internal"}


def _domain_state(domain: libvirt.virDomain) -> str:
    return _STATES.get(domain.state()[0], "unknown")
