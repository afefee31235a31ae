"""Speed targets of the pure core (`make bench`; never part of the timed unit tests).

Targets, on the 2-core CI machine: validating a lab.yaml and planning a 60-node lab well under
50 ms; one seed ISO under 20 ms; all seeds of the default lab (with PKI already made) under 1 s."""

import pytest

from labctl.guest.seed import build_seed_iso, render_seed
from labctl.lab.config import load_lab, parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets
from tests.guest.manifests import with_cni

BIG = "nodes: {master: {count: 7}, worker: {count: 50}, lb: {count: 2}}"


def test_validate_and_plan_a_big_lab(benchmark):
    plan = benchmark(lambda: plan_lab(parse_lab(BIG, "bench")))
    assert len(plan.nodes) == 60
    assert benchmark.stats["mean"] < 0.05


@pytest.fixture(scope="module")
def default_lab(tmp_path_factory):
    plan = with_cni(plan_lab(load_lab()))
    return plan, ensure_secrets(LabState.for_lab("k8s", tmp_path_factory.mktemp("state")), plan)


def test_one_seed_iso(benchmark, default_lab):
    plan, secrets = default_lab
    files = render_seed(plan, plan.node("master2"), secrets)
    iso = benchmark(build_seed_iso, files)
    assert iso[32769:32774] == b"CD001"
    assert benchmark.stats["mean"] < 0.02


def test_every_seed_of_the_default_lab(benchmark, default_lab):
    plan, secrets = default_lab
    isos = benchmark(lambda: [build_seed_iso(render_seed(plan, node, secrets)) for node in plan.nodes])
    assert len(isos) == 7
    assert benchmark.stats["mean"] < 1.0
