"""Shared pieces of the tests that run labctl against a real hypervisor: a blank base image, a lab.yaml,
the environment that points labctl at a private libvirtd, a snapshot of what libvirt holds, and `up`
interrupted at a step boundary."""

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt

from labctl.backends.libvirt.xml import read_tag
from labctl.cli.output import PAUSE_AFTER_STEP
from labctl.lab.accel import choose_accel, read_host_facts

LAB_YAML = """\
name: {name}
image: {{path: {image}, sha256: {sha256}}}
accel: {accel}
kubernetes: {{enforce_minimums: false, cni_manifest: {{path: {manifest}, sha256: {manifest_sha256}}}}}
nodes:
  gateway: {{memory: 512}}
  lb: {{memory: 512}}
  master: {{count: {masters}, cpus: 1, memory: 512}}
  worker: {{count: {workers}, cpus: 1, memory: 512}}
"""


def written_image(path: Path, fmt: str = "qcow2", size: str = "64M", pattern: int = 0, length: str = "64k") -> Path:
    """A disk image whose first ``length`` bytes are ``pattern``: VirtualBox cannot open a qcow2 that was
    never written to (no L1 table yet)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True, timeout=60)
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {pattern} 0 {length}", str(path)], check=True,
                   timeout=60, capture_output=True)
    return path


def same_data(first: Path, first_format: str, second: Path, second_format: str) -> str:
    """"" when the two images hold the same data (``qemu-img compare``), else what it said."""
    compare = subprocess.run(["qemu-img", "compare", "-f", first_format, "-F", second_format, str(first), str(second)],
                             capture_output=True, text=True, timeout=60)
    return "" if compare.returncode == 0 else compare.stdout + compare.stderr


def blank_image(directory: Path) -> tuple[Path, str]:
    """A small blank qcow2 (it never boots; domains sit in the BIOS; its first 64 KiB are zeros written so
    every hypervisor opens it) and its SHA-256."""
    image = directory / "base.qcow2"
    if not image.exists():
        written_image(image)
    return image, hashlib.sha256(image.read_bytes()).hexdigest()


def accel_for_tests() -> str:
    # auto where it resolves to TCG (as on a PVM-only host), so the automatic choice is exercised;
    # the private daemon has no /dev/kvm, so a host with working KVM gets tcg explicitly.
    return "auto" if choose_accel("auto", read_host_facts()).emulated else "tcg"


def cni_file(directory: Path) -> tuple[Path, str]:
    """flannel's manifest structure as a local file (labs here have no internet), and its SHA-256."""
    from tests.guest.manifests import FLANNEL

    path = directory / "kube-flannel.yml"
    path.write_text(FLANNEL)
    return path, hashlib.sha256(FLANNEL.encode()).hexdigest()


def write_lab(directory: Path, name: str = "k8s", masters: int = 3, workers: int = 2) -> Path:
    image, digest = blank_image(directory)
    manifest, manifest_sha256 = cni_file(directory)
    config = directory / f"{name}.yaml"
    config.write_text(LAB_YAML.format(name=name, image=image, sha256=digest, accel=accel_for_tests(),
                                      masters=masters, workers=workers, manifest=manifest,
                                      manifest_sha256=manifest_sha256))
    return config


def lab_env(daemon, work: Path, config: Path) -> dict[str, str]:
    """The environment that points labctl at the private daemon, with its own XDG dirs."""
    (daemon.base_dir / "console").mkdir(exist_ok=True)
    return {
        **os.environ,
        "XDG_DATA_HOME": str(work / "data"),
        "XDG_CACHE_HOME": str(work / "cache"),
        "LABCTL_POOL_DIR": str(daemon.base_dir / "pool"),
        "LABCTL_CONSOLE_DIR": str(daemon.base_dir / "console"),
        "LABCTL_CONFIG": str(config),
        "LIBVIRT_DEFAULT_URI": daemon.uri,
    }


def labctl(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labctl", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def labctl_popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "labctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def snapshot(conn: libvirt.virConnect) -> dict[str, list]:
    """Everything libvirt holds, by kind: names, uuids, states, tags."""
    pool = conn.storagePoolLookupByName("labctl")
    pool.refresh(0)
    return {
        "domains": sorted((d.name(), d.UUIDString(), d.isActive(), read_tag(d.XMLDesc(0)))
                          for d in conn.listAllDomains()),
        "networks": sorted((n.name(), n.UUIDString(), n.isActive()) for n in conn.listAllNetworks()),
        "volumes": sorted(v.name() for v in pool.listAllVolumes()),
    }


def normalized(snap: dict[str, list]) -> dict[str, list]:
    """A snapshot with lab ids (random per lab instance) replaced, for comparing lab instances."""
    ids = {tag.lab_id for *_, tag in snap["domains"] if tag}
    pattern = re.compile("|".join(map(re.escape, sorted(ids)))) if ids else None

    def clean(text: str) -> str:
        return pattern.sub("ID", text) if pattern else text

    return {
        "domains": sorted((name, uuid, active, tag.node if tag else None) for name, uuid, active, tag in
                          snap["domains"]),
        "networks": snap["networks"],
        "volumes": sorted(clean(v) for v in snap["volumes"]),
    }


FIGURES = Path(__file__).resolve().parent.parent / "build" / "figures.json"


def record_figure(name: str, value: object) -> None:
    """Print a reliability figure and collect it in build/figures.json (for the README table)."""
    print(f"FIGURE {name}: {json.dumps(value)}")
    FIGURES.parent.mkdir(exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class Interruption:
    code: int  # the process's return code (-9: SIGKILL, 130: Ctrl-C)
    stderr: str
    landed: bool  # the signal reached a live process paused at the boundary and ended it


def interrupt_after_step(env: dict, step: int, signum: int = signal.SIGKILL) -> Interruption:
    """Start `up`; once it has printed its ``step``-th step and paused there (labctl's test-only pause on a
    FIFO, see labctl/cli/output.py), send ``signum``; then let go. Landed: ended by that signal."""
    with tempfile.TemporaryDirectory(prefix="lc-pause-") as scratch:
        fifo = Path(scratch) / "pause"
        os.mkfifo(fifo)
        proc = labctl_popen({**env, PAUSE_AFTER_STEP: f"{step}:{fifo}"}, "up", "--no-wait")
        holder = hold_at_pause(proc, fifo)
        alive = holder is not None and proc.poll() is None
        if alive:
            proc.send_signal(signum)
        if holder is not None:
            os.close(holder)
        _, stderr = proc.communicate(timeout=120)
    expected = -signal.SIGKILL if signum == signal.SIGKILL else 130
    return Interruption(proc.returncode, stderr, alive and proc.returncode == expected)


def hold_at_pause(proc, fifo: Path, timeout: float = 300) -> int | None:
    """Open the FIFO's writing end once `up` waits on it (it is then exactly at the boundary); None when
    `up` ended first. Non-blocking, so a run that never gets there cannot hang the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO:  # ENXIO: nobody reads yet
                raise
        time.sleep(0.02)
    return None
