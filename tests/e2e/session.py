"""The running lab the e2e checks look at: image, private libvirtd, namespace server, ``labctl up``.

:func:`lab_session` is what every e2e lab shares (timings, a short base directory, the private
libvirtd in its namespace, an exit stack that undoes everything whatever happened, the consoles kept
with the test's files). :func:`running_lab` builds the main lab on it and yields an :class:`E2E`;
leaving it destroys the lab, ends every process it started by its pid (the namespace server, the
daemons and their qemu and dnsmasq) and deletes the namespace. Timings of every phase go to
``timings.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from labctl.access.readiness import console_tail
from labctl.image.build import BuiltImage
from tests.e2e.image import e2e_image
from tests.e2e.lab import Lab, NetnsServer, Timings, lab_yaml, phase_timeline
from tests.guest.manifests import FLANNEL
from tests.harness.libvirtd import PrivateLibvirtd, can_run
from tests.httpserver import HTTPTestServer
from tests.labenv import lab_env

HERE = Path(__file__).resolve().parent
TIMINGS_REPORT = HERE.parent.parent / "build" / "e2e-timings.json"
LAB = "e2e"
# Two load balancers: the API name is keepalived's VIP, and `labctl drill lb` has somewhere to move it.
MAIN_SHAPE = {"masters": 3, "workers": 1, "lbs": 2}
MAIN_NODES = ["gateway", "lb1", "lb2", "master1", "master2", "master3", "worker1"]
NETNS_PORT = 18080
UP_TIMEOUT = 2400  # a cold six-node lab under TCG on two cores
SMALL_UP_TIMEOUT = 1500
CA_FILES = ("ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key",
            "sa.key", "sa.pub")
CLOCK_SKEW = 5.0  # seconds two guests' clocks may disagree (all start from the host's RTC)
STANDIN_DIR = "/var/lib/labctl-standin"
# flannel's manifest as the test's server on 127.0.0.1 serves it to labctl on the host, which verifies,
# adapts and carries it to master1; the kubectl stand-in records what it applied.
CNI_MANIFEST = ("# labctl-e2e: served by the test's HTTP server on the host\n" + FLANNEL).encode()


def skip_reason() -> str | None:
    ok, why = can_run()
    if not ok:
        return why
    missing = [tool for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img", "dpkg-deb") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)}" if missing else None


def require(reason: str | None, what: str) -> None:
    """Skip ``what`` for ``reason`` (printed), or fail instead under CI as root: CI must run every lab."""
    if reason and os.geteuid() == 0 and os.environ.get("CI"):
        pytest.fail(f"{what} cannot run: {reason} (CI must provide it: make test-deps)")
    if reason:
        print(f"{what} skipped: {reason}")
        pytest.skip(reason)


@dataclass
class E2E:
    lab: Lab
    daemon: PrivateLibvirtd
    work: Path
    timings: Timings
    netns_server: NetnsServer
    image_entry: dict[str, str]
    cni: tuple[str, str]
    facts: dict[str, Any] = field(default_factory=dict)


def lab_for(daemon: PrivateLibvirtd, work: Path, name: str, text: str) -> Lab:
    config = work / f"{name}.yaml"
    config.write_text(text)
    env = lab_env(daemon, work, config)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent.parent), os.environ.get("PYTHONPATH")]))
    env.pop("LABCTL_NAME", None)
    return Lab(config, env, daemon.netns, daemon.base_dir / "console", Path(env["XDG_DATA_HOME"]))


def serve_cni(server: HTTPTestServer, body: bytes = CNI_MANIFEST) -> tuple[str, str]:
    """The manifest's URL on the test's server (127.0.0.1, where labctl fetches it), and its SHA-256."""
    return server.add("/cni.yaml", body), hashlib.sha256(body).hexdigest()


def lab_text(name: str, image: dict[str, str], masters: int, workers: int, cni: tuple[str, str],
             **shape: int) -> str:
    """lab.yaml of an e2e lab (``shape``: lbs, etcd) with the CNI manifest the test's server serves."""
    return lab_yaml(name, image, masters=masters, workers=workers, cni=cni, **shape)


def destroy_lab(lab: Lab) -> None:
    """Teardown: `labctl destroy --yes`, bounded; never raises (the daemon's stop comes next)."""
    try:
        done = lab.labctl("destroy", "--yes", timeout=300)
    except (subprocess.TimeoutExpired, OSError) as err:
        print(f"[e2e] teardown: destroy {lab.name}: {err}", flush=True)
        return
    print(f"[e2e] teardown: destroy {lab.name}: exit {done.returncode} {done.stderr.strip()[-300:]}", flush=True)


def failure_report(lab: Lab, lines: list[tuple[float, str]]) -> str:
    tails = []
    for node in lab.plan.node_names:
        phases = lab.phases(node)
        if not phases or phases[-1] != "ready":
            tail = "\n".join(console_tail(lab.console(node), 40))
            tails.append(f"--- {node} phases {phases}; console tail:\n{tail}")
    return "\n".join([*(line for _, line in lines[-40:]), *tails])


def keep_consoles_and_remove(base: Path, work: Path) -> None:
    """After the daemon stopped: copy the serial console logs into ``work``, delete ``base``."""
    consoles = base / "console"
    if consoles.is_dir():
        shutil.copytree(consoles, work / "console", dirs_exist_ok=True)
    shutil.rmtree(base, ignore_errors=True)


def boot_profile(lab: Lab, node: str, work: Path, timeout: float = 240) -> list[str]:
    """Where a node's boot went (systemd and cloud-init's own accounts): printed and kept, never fatal."""
    script = ("systemd-analyze; systemd-analyze blame --no-pager | head -n 8; "
              "sudo cloud-init analyze show | grep -E 'Finished stage|Total Time'; "
              "sudo cloud-init analyze blame | sed -n 2,9p")
    try:
        done = lab.ssh(node, "sh", "-c", script, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ["(timed out)"]
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    (work / f"boot-profile-{node}.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(f"[e2e boot profile {node}] {line}" for line in lines), flush=True)
    return lines


@dataclass
class Session:
    """What every e2e lab shares: its timings, its base directory (short: unix socket paths are limited
    to 107 bytes), the private libvirtd in its own network namespace, and the stack that undoes it all."""

    timings: Timings
    base: Path
    stack: contextlib.ExitStack
    daemon: PrivateLibvirtd


@contextlib.contextmanager
def lab_session(work: Path, label: str, report: Path | None = TIMINGS_REPORT) -> Iterator[Session]:
    """Start the private libvirtd; whatever happens, undo everything pushed on ``stack`` (last in, first
    out: the callers' labs are destroyed before the daemon stops), keep the consoles with the test's
    files, and write the timings (to ``work/timings.json`` and ``report``)."""
    timings = Timings()
    base = Path("/tmp") / f"lc-{os.getpid()}-{label}"
    base.mkdir(exist_ok=True)
    stack = contextlib.ExitStack()
    try:
        # Runs last (LIFO): the consoles are kept with the test's files, the rest (pool: ~600 MiB) goes.
        stack.callback(keep_consoles_and_remove, base, work)
        with timings.measure("private libvirtd in a new network namespace"):
            daemon = PrivateLibvirtd(base)
            stack.callback(daemon.stop)
            daemon.start()
        (base / "console").mkdir(exist_ok=True)
        yield Session(timings, base, stack, daemon)
    finally:
        with timings.measure("teardown: destroy, end processes, delete namespace"):
            stack.close()
        print(timings.table(), flush=True)
        timings.save(work / "timings.json")
        if report is not None:
            report.parent.mkdir(exist_ok=True)
            timings.save(report)  # shown at the end of the test run (tests/conftest.py)
        print(f"[{label}] timings written to {work / 'timings.json'}" + (f" and {report}" if report else ""),
              flush=True)


def served_image(stack: contextlib.ExitStack, server: HTTPTestServer, image: BuiltImage) -> dict[str, str]:
    """``image`` served by ``server`` (127.0.0.1) with its SHA-512: the lab.yaml ``image:`` entry, so that
    labctl's real download-and-verify path runs."""
    handle = stack.enter_context(image.path.open("rb"))
    body = stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
    return {"name": image.name, "url": server.add(f"/{image.name}.qcow2", body), "sha512": image.sha512,
            "kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline}


@contextlib.contextmanager
def running_lab(work: Path, name: str = LAB, shape: dict[str, int] | None = None,
                up_timeout: float = UP_TIMEOUT) -> Iterator[E2E]:
    """Build or take the image, serve it, start the daemons and the namespace server, `labctl up` of lab
    ``name`` shaped as ``shape`` (masters, workers, lbs, etcd; default the main lab's)."""
    shape = shape or MAIN_SHAPE
    with lab_session(work, "e2e") as session:
        timings, stack, daemon = session.timings, session.stack, session.daemon
        with timings.measure("image: build or take from cache"):
            image, built = e2e_image(log=lambda line: print(f"[e2e image] {line}", flush=True))
        timings.notes["image"] = {"built": built, "path": str(image.path), "bytes": image.path.stat().st_size}
        server = stack.enter_context(HTTPTestServer())
        entry = served_image(stack, server, image)
        cni = serve_cni(server)
        lab = lab_for(daemon, work, name, lab_text(name, entry, cni=cni, **shape))
        netns_server = NetnsServer(daemon.netns, NETNS_PORT, work / "netns-server.jsonl")
        stack.callback(netns_server.stop)
        netns_server.start()
        stack.callback(destroy_lab, lab)
        nodes = list(lab.plan.node_names)
        with timings.measure(f"labctl up: {len(nodes)} nodes from nothing to ready"):
            code, lines = lab.up(up_timeout, work / "up.log")
        timings.notes["up_phases"] = phase_timeline(lines, nodes)
        assert code == 0, f"labctl up exited {code}:\n{failure_report(lab, lines)}"
        assert server.seen("/labctl-e2e.qcow2"), "labctl did not download the image from the test server"
        assert server.seen("/cni.yaml"), "labctl did not fetch the CNI manifest from the test server"
        timings.notes["boot_profile_master1"] = boot_profile(lab, "master1", work)
        yield E2E(lab, daemon, work, timings, netns_server, entry, cni)
