"""Gathering what `labctl doctor` (and the gate in front of `up`) checks: the hypervisor, through the
backend's facts, and this host (``ip -j``, /proc/meminfo, the image cache, pycdlib).

Every side effect goes through :class:`Probes` or the ``connect`` function, so tests fake the host;
the checks themselves are the pure functions of :mod:`labctl.ops.doctor`.
"""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labctl.backends.base import Backend, HypervisorFacts
from labctl.errors import LabError
from labctl.image.cache import ImageCache
from labctl.lab.accel import HostFacts, read_host_facts
from labctl.lab.model import Lab
from labctl.lab.plan import Plan
from labctl.ops.doctor import (
    FAIL,
    OK,
    Check,
    Facts,
    parse_addresses,
    parse_link_names,
    parse_meminfo,
    parse_routes,
    refuse_if_blocked,
    run_checks,
)


def run_text(argv: Sequence[str]) -> str:
    """Run ``argv`` (no shell) and return its stdout; raises OSError or CalledProcessError."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=10).stdout


@dataclass(frozen=True)
class Probes:
    """The side effects :func:`gather_facts` uses on this host, injectable for tests."""

    run: Callable[[Sequence[str]], str] = run_text
    read_text: Callable[[Path], str] = lambda path: path.read_text()
    importable: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None
    host_facts: Callable[[], HostFacts] = read_host_facts
    probe_url: Callable[[str], str | None] | None = None  # None: do not go on the network


def gather_facts(plan: Plan, backend_name: str, target: str, connect: Callable[[], Backend], *, local: bool,
                 probes: Probes = Probes(), cache: ImageCache | None = None) -> Facts:
    """Look at this host (where the hypervisor is ``local``) and, through ``connect()``'s backend, at the
    hypervisor."""
    hypervisor: HypervisorFacts | None = None
    error: str | None = None
    fix = ""
    try:
        hypervisor = connect().doctor_facts(plan)
    except LabError as err:
        error, fix = err.message, err.hint or ""
    return Facts(
        backend=backend_name,
        target=target,
        hypervisor=hypervisor,
        connect_error=error,
        connect_fix=fix,
        local=local,
        host_accel=probes.host_facts() if local else None,
        mem_available_mib=_host_memory(probes) if local else None,
        image=image_check(plan.lab, cache or ImageCache(), probes.probe_url),
        pycdlib=probes.importable("pycdlib"),
        **(_host_network_facts(probes) if local else {}),
    )


def _host_memory(probes: Probes) -> int | None:
    try:
        return parse_meminfo(probes.read_text(Path("/proc/meminfo")))
    except (OSError, ValueError):
        return None


def _host_network_facts(probes: Probes) -> dict[str, Any]:
    try:
        routes = parse_routes(probes.run(["ip", "-j", "route"])) + parse_addresses(probes.run(["ip", "-j", "addr"]))
        bridges = parse_link_names(probes.run(["ip", "-j", "link", "show", "type", "bridge"]))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"routes": tuple(routes), "bridges": bridges}


def image_check(lab: Lab, cache: ImageCache, probe_url: Callable[[str], str | None] | None) -> Check:
    """Is the lab's image cached, importable, or (asking ``probe_url``) downloadable?"""
    spec = lab.image
    if cache.find_spec(spec) is not None:
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


def refuse_unready_host(plan: Plan, backend: Backend) -> None:
    """The gate in front of `up`: the doctor's checks (offline), refusing on any FAIL."""
    facts = gather_facts(plan, backend.name, backend.target, lambda: backend, local=backend.reach(backend.target).local)
    refuse_if_blocked(run_checks(plan, facts))
