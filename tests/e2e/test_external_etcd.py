"""TEMPORARY: an external-etcd lab of its own (gateway, lb1, etcd1..3 at 512 MiB, master1) booted from the
e2e image, to run the checks of tests/e2e/etcd_checks.py until the apt-path lab (issue #13) runs them: the
lead folds those calls into that lab's module at merge time and deletes this file with its boot.

Real etcd (Debian's etcd-server, pre-baked in the e2e image) on the etcd nodes with the lab's certificates,
the kubeadm stand-in on master1. Timings go to timings.json in the test's tmp dir (``pytest -s`` prints them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e import etcd_checks
from tests.e2e.session import E2E, running_lab, skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LAB = "e2eetcd"
SHAPE = {"masters": 1, "workers": 0, "lbs": 1, "etcd": 3}
UP_TIMEOUT = 2400  # as the main lab: six small nodes under TCG on a busy two-core machine


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    reason = skip_reason()
    if reason and os.geteuid() == 0 and os.environ.get("CI"):
        pytest.fail(f"e2e cannot run: {reason} (CI must provide it: make test-deps)")
    if reason:
        pytest.skip(reason)
    with running_lab(tmp_path_factory.mktemp("e2eetcd"), LAB, SHAPE, UP_TIMEOUT) as running:
        yield running


@pytest.fixture(autouse=True)
def timed(request: pytest.FixtureRequest, e2e: E2E) -> Iterator[None]:
    with e2e.timings.measure(f"check {request.node.name.removeprefix('test_')}"):
        yield


def test_1_kubeadm_init_config_names_the_members_and_the_hosts_files(e2e: E2E) -> None:
    e2e.timings.notes["init_config"] = etcd_checks.check_init_config(e2e.lab)


def test_2_every_member_is_healthy_from_master1_with_the_apiserver_certificate(e2e: E2E) -> None:
    etcd_checks.check_cluster_health(e2e.lab)


def test_3_labctl_etcd_status_shows_every_member_and_one_leader(e2e: E2E) -> None:
    e2e.timings.notes["status"] = etcd_checks.check_status(e2e.lab)


def test_4_labctl_etcd_snapshot_save_gives_a_verified_file(e2e: E2E) -> None:
    e2e.timings.notes["snapshot"] = etcd_checks.check_snapshot_save(e2e.lab, e2e.work)


def test_5_the_etcd_member_drill_holds_with_one_down_and_loses_quorum_with_two(e2e: E2E) -> None:
    e2e.timings.notes["member_drill"] = etcd_checks.check_member_drill(e2e.lab)


def test_6_a_restore_brings_back_the_key_before_the_snapshot_and_not_the_one_after(e2e: E2E) -> None:
    e2e.timings.notes["restore"] = etcd_checks.check_restore(e2e.lab, e2e.work)
