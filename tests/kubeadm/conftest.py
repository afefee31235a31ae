"""Fixtures of the real-kubeadm checks: the release (one per minor in labs.MINORS), kubeadm and the pin
helper built for it, and each lab shape of labs.LAB_SHAPES rendered at its minor with its secrets."""

from pathlib import Path

import pytest

from labctl.guest.roles import KUBEADM_CONFIG
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets
from tests.kubeadm.gotool import Go
from tests.kubeadm.labs import LAB_SHAPES, MINORS, seed_files, shape_plan
from tests.kubeadm.tooling import kubeadm_binary, or_skip, pin_binary, resolve_release


@pytest.fixture(scope="session", params=MINORS)
def release(request) -> str:
    return or_skip(lambda: resolve_release(Go.find(), request.param))


@pytest.fixture(scope="session")
def kubeadm(release) -> Path:
    return or_skip(kubeadm_binary, release)


@pytest.fixture(scope="session")
def kubeadm_pin(release) -> Path:
    return or_skip(pin_binary, release)


@pytest.fixture(scope="module", params=sorted(LAB_SHAPES))
def lab(request, release, tmp_path_factory):
    """A lab shape at kubeadm's own minor, with its secrets: (plan, secrets)."""
    plan = shape_plan(request.param, release)
    return plan, ensure_secrets(LabState.for_lab(plan.lab.name, tmp_path_factory.mktemp("state")), plan)


@pytest.fixture(scope="module")
def kubeadm_configs(lab, tmp_path_factory) -> dict[str, Path]:
    """Every node's /etc/labctl/kubeadm.yaml as its seed carries it, written to files: node name -> path."""
    plan, secrets = lab
    directory = tmp_path_factory.mktemp("kubeadm-configs")
    paths = {}
    for node in plan.nodes:
        files = seed_files(plan, node, secrets)
        if KUBEADM_CONFIG in files:
            paths[node.name] = directory / f"{node.name}.yaml"
            paths[node.name].write_text(files[KUBEADM_CONFIG]["content"])
    return paths
