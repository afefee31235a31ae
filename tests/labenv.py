"""Shared pieces of the tests that run labctl against a private libvirtd: a blank base image,
a lab.yaml, the environment that points labctl at the daemon, and a snapshot of what libvirt holds."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import libvirt

from labctl.backends.libvirt.xml import read_tag
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


def blank_image(directory: Path) -> tuple[Path, str]:
    """A small empty qcow2 (it never boots; domains sit in the BIOS) and its SHA-256."""
    image = directory / "base.qcow2"
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True, timeout=30)
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
