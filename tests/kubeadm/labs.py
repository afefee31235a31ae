"""What the real-kubeadm checks run on: every lab shape labctl renders, at every minor built, and kubeadm
run with no network.

A shape is lab.yaml content without the Kubernetes version, which is set to the minor of the kubeadm
that checks it (kubeadm refuses control planes older than its own minor minus one; on a node labctl
installs the kubeadm of the lab's own minor). Adding a shape or a minor is one entry below; every
check in tests/kubeadm runs for it.
"""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from labctl.guest.cloudconfig import role_config
from labctl.lab.config import parse_lab
from labctl.lab.plan import NodePlan, Plan, plan_lab
from labctl.pki.secrets import LabSecrets
from tests.guest.manifests import with_cni
from tests.kubeadm.gomodule import parse_release
from tests.kubeadm.tooling import DEFAULT_MINOR

LAB_SHAPES: dict[str, dict[str, Any]] = {
    "default": {},  # one load balancer, three masters with stacked etcd, two workers
    "single-master": {"nodes": {"master": {"count": 1}, "worker": {"count": 1}}},
    "two-lbs": {"nodes": {"lb": {"count": 2}}},  # the API on keepalived's address
    "external-etcd": {"kubernetes": {"etcd": "external"}, "nodes": {"master": {"count": 3}, "etcd": {"count": 3}}},
}
# The minors whose kubeadm is built and run (a cold build costs minutes once, then it is cached).
MINORS = (DEFAULT_MINOR,)

UNREACHABLE_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, a request fails at once


def shape_plan(shape: str, release: str) -> Plan:
    """The plan of lab shape ``shape`` with ``kubernetes.version`` at ``release``'s minor."""
    major, minor, _ = parse_release(release)
    document = dict(LAB_SHAPES[shape])
    document["kubernetes"] = {**document.get("kubernetes", {}), "version": f"{major}.{minor}"}
    return with_cni(plan_lab(parse_lab(yaml.safe_dump(document), f"{shape} lab at kubeadm's minor")))


def seed_files(plan: Plan, node: NodePlan, secrets: LabSecrets) -> dict[str, dict[str, Any]]:
    """The files ``node``'s seed writes (cloud-init write_files entries), by path on the node."""
    return {entry["path"]: entry for entry in role_config(plan, node, secrets)["write_files"]}


def run_offline(argv: list[str], home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with ``home`` as HOME, no network, a minimal environment; output captured.

    As root in an empty network namespace, else behind a proxy address nothing listens on: either way
    kubeadm's "stable-1.35" falls back to its own version instead of asking the internet."""
    env = {"HOME": str(home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "HTTPS_PROXY": UNREACHABLE_PROXY, "HTTP_PROXY": UNREACHABLE_PROXY, "NO_PROXY": ""}
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare:
        argv = [unshare, "--net", *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
