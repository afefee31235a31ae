"""Gathering what `labctl doctor` checks: the host (ip -j, /proc/meminfo, /dev/kvm) and libvirt.

Every side effect goes through :class:`Probes` or the ``connect`` function, so tests fake the host;
the checks themselves are the pure functions of :mod:`labctl.ops.doctor`.
"""

import getpass
import grp
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libvirt

from labctl.access.ssh import uri_is_local
from labctl.backends.libvirt.backend import POOL_NAME
from labctl.backends.libvirt.backend import _lookup as lookup  # the same missing-is-None lookup as the backend
from labctl.backends.libvirt.backend import _translated as translated
from labctl.backends.libvirt.xml import read_tag
from labctl.errors import BackendError, LabError
from labctl.image.cache import ImageCache
from labctl.lab.accel import HostFacts, read_host_facts
from labctl.lab.catalog import ImageSpec
from labctl.lab.model import Lab
from labctl.lab.plan import Plan
from labctl.ops.doctor import (
    FAIL,
    OK,
    Check,
    Facts,
    parse_addresses,
    parse_libvirt_network,
    parse_link_names,
    parse_meminfo,
    parse_routes,
)

LIBVIRT_SOCKETS = (Path("/run/libvirt/virtqemud-sock"), Path("/run/libvirt/libvirt-sock"))


def run_text(argv: Sequence[str]) -> str:
    """Run ``argv`` (no shell) and return its stdout; raises OSError or CalledProcessError."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=10).stdout


@dataclass(frozen=True)
class Probes:
    """The side effects :func:`gather_facts` uses, injectable for tests."""

    run: Callable[[Sequence[str]], str] = run_text
    read_text: Callable[[Path], str] = lambda path: path.read_text()
    which: Callable[[str], str | None] = shutil.which
    importable: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None
    host_facts: Callable[[], HostFacts] = read_host_facts
    probe_url: Callable[[str], str | None] | None = None  # None: do not go on the network


def gather_facts(plan: Plan, connect: Callable[[], Any], uri: str, *, probes: Probes = Probes(),
                 cache: ImageCache | None = None) -> Facts:
    """Look at the host (and, through ``connect()``'s backend, at libvirt) for :func:`run_checks`."""
    error: str | None = None
    hint = ""
    try:
        backend = connect()
    except LabError as err:
        backend, error, hint = None, err.message, err.hint or ""
    local = backend.is_local if backend is not None else uri_is_local(uri)
    facts = Facts(
        uri=backend.conn.getURI() if backend is not None else uri,
        local=local,
        libvirt_error=error,
        libvirt_fix=(socket_fix(uri) or hint) if error and local else hint,
        accel=probes.host_facts() if local else (backend.host_facts() if backend is not None else None),
        qemu_img=probes.which("qemu-img") is not None if local else None,
        mem_available_mib=_available_memory(backend, local, probes),
        image=image_check(plan.lab, cache or ImageCache(), probes.probe_url),
        pycdlib=probes.importable("pycdlib"),
        **(_host_network_facts(probes) if local else {}),
    )
    return replace(facts, **_libvirt_facts(plan, backend, local)) if backend is not None else facts


def _host_network_facts(probes: Probes) -> dict[str, Any]:
    try:
        routes = parse_routes(probes.run(["ip", "-j", "route"])) + parse_addresses(probes.run(["ip", "-j", "addr"]))
        bridges = parse_link_names(probes.run(["ip", "-j", "link", "show", "type", "bridge"]))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"routes": tuple(routes), "bridges": bridges}


def _available_memory(backend: Any, local: bool, probes: Probes) -> int | None:
    try:
        if local:
            return parse_meminfo(probes.read_text(Path("/proc/meminfo")))
        if backend is not None:
            stats = backend.conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            return int(sum(stats.get(key, 0) for key in ("free", "buffers", "cached"))) // 1024
    except (OSError, ValueError, libvirt.libvirtError):
        pass
    return None


def _libvirt_facts(plan: Plan, backend: Any, local: bool) -> dict[str, Any]:
    """Domain states, the networks libvirt knows, objects under our names that are not ours, pool space."""
    lab = plan.lab.name
    try:
        domains = {node.name: lookup(backend.conn.lookupByName, node.domain_name, "domain") for node in plan.nodes}
        with translated("listing libvirt networks"):
            networks = tuple(parse_libvirt_network(net.XMLDesc(0), net.name())
                             for net in backend.conn.listAllNetworks(0))
        with translated("reading the lab's domains"):
            running = frozenset(name for name, domain in domains.items() if domain and domain.isActive())
            foreign = [f"domain {domain.name()}" for domain in domains.values() if domain and _tag_lab(domain) != lab]
    except BackendError as err:
        return {"libvirt_error": f"connected, but {err.message}"}
    mine = {net.libvirt_name for net in plan.networks}
    foreign += [f"network {net.name}" for net in networks if net.name in mine and net.lab != lab]
    return {"defined": frozenset(name for name, domain in domains.items() if domain), "running": running,
            "networks": networks, "foreign": tuple(foreign), "disk_free": _pool_free(backend, local)}


def _tag_lab(obj: Any) -> str | None:
    tag = read_tag(obj.XMLDesc(0))
    return tag.lab if tag else None


def _pool_free(backend: Any, local: bool) -> int | None:
    """The pool's free bytes; before the first `up`, the free space where it will be made (here only)."""
    try:
        pool = lookup(backend.conn.storagePoolLookupByName, POOL_NAME, "storage pool")
        with translated("reading the storage pool"):
            if pool is not None and pool.isActive():
                return int(pool.info()[3])
    except BackendError:
        return None
    if not local:
        return None
    where = Path(backend.pool_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        stats = os.statvfs(where)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def socket_fix(uri: str, candidates: Sequence[Path] = LIBVIRT_SOCKETS) -> str:
    """Why a local system libvirt refused us, from its socket: missing, or not ours to write (group)."""
    if not uri.endswith("/system"):
        return ""
    sockets = [path for path in candidates if path.exists()]
    if not sockets:
        return "start libvirt: sudo systemctl enable --now libvirtd.socket (or virtqemud.socket)"
    path = sockets[0]
    if os.access(path, os.R_OK | os.W_OK):
        return (f"{path} is writable by you, so see the error: polkit refusing you (join group libvirt), "
                "or the daemon failing to start (systemctl status libvirtd virtqemud)")
    info = path.stat()
    try:
        group = grp.getgrgid(info.st_gid)
    except KeyError:
        return f"{path} is not writable by you (gid {info.st_gid})"
    if getpass.getuser() in group.gr_mem:
        return f"you are in group {group.gr_name} but this session is not: log in again (or run newgrp)"
    return f"{path} is group {group.gr_name}: sudo usermod -aG {group.gr_name} $USER, then log in again"


def image_check(lab: Lab, cache: ImageCache, probe_url: Callable[[str], str | None] | None) -> Check:
    """Is the lab's image cached, importable, or (asking ``probe_url``) downloadable?"""
    spec = lab.image
    if _cached(spec, cache):
        return Check("image", OK, f"{spec.name} is cached")
    if spec.path is not None:
        if spec.path.is_file():
            return Check("image", OK, f"{spec.name}: `up` imports {spec.path}")
        return Check("image", FAIL, f"image file {spec.path} not found", "fix image.path in lab.yaml")
    url = str(spec.url)
    problem = probe_url(url) if probe_url else None
    if problem:
        return Check("image", FAIL, f"{spec.name} is not cached and {url} is unreachable: {problem}",
                     "check the network and proxy (HTTPS_PROXY), or pull it where it works: labctl image pull")
    return Check("image", OK, f"{spec.name} is not cached; `up` downloads it from {urlsplit(url).hostname}")


def _cached(spec: ImageSpec, cache: ImageCache) -> bool:
    if spec.algo and spec.digest:
        return cache.find(spec.algo, spec.digest) is not None
    if spec.path is not None:
        return cache.find_by_source(spec.path) is not None
    return cache.find_by_url(str(spec.url)) is not None


def probe_url(url: str) -> str | None:
    """None when ``url`` answers a HEAD request (following redirects), else why not."""
    import requests

    from labctl.image.download import make_session

    try:
        with make_session() as session:
            response = session.head(url, allow_redirects=True, timeout=10)
    except requests.RequestException as err:
        return " ".join(str(err).split())[:200]
    return None if response.status_code < 400 else f"HTTP {response.status_code}"
