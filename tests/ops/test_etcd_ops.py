"""labctl.ops.etcd against an in-memory etcd (tests/ops/fake_etcd.py): what runs where, and what is reported."""

import hashlib
import shlex
import shutil
import stat
import subprocess

import pytest

from labctl.errors import LabError
from labctl.guest.etcd import APISERVER_CLIENT_CERT, DATA_DIR, cluster_token, initial_cluster
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from labctl.ops.etcd import Etcdctl, etcd_status, script, snapshot_restore, snapshot_save
from labctl.resources import data_file
from tests.ops.fake_etcd import SNAPSHOT, FakeEtcd


@pytest.fixture
def plan():
    return plan_lab(parse_lab("kubernetes: {etcd: external}\nnodes: {master: {count: 3}}", "t"))


def test_status_names_every_member_with_health_leader_and_revision(plan):
    fake = FakeEtcd(plan, leader="etcd2")
    status = etcd_status(Etcdctl(plan, fake))
    assert [(m.name, m.healthy, m.leader, m.revision) for m in status.members] == [
        ("etcd1", True, False, 42), ("etcd2", True, True, 42), ("etcd3", True, False, 42)]
    data = status.as_dict()
    assert (data["topology"], data["quorum"], data["healthy"], data["has_quorum"], data["leader"], data["via"]) == (
        "external", 2, 3, True, "etcd2", "master1")
    node, argv = fake.calls[0]
    assert node == "master1" and argv[:3] == ["sudo", "-n", "etcdctl"]
    assert f"--cert={APISERVER_CLIENT_CERT}" in argv


def test_status_with_a_member_down_and_master1_unreachable(plan):
    fake = FakeEtcd(plan, down={"etcd3"}, unreachable={"master1"})
    status = etcd_status(Etcdctl(plan, fake))
    assert status.via == "master2"
    assert [(m.name, m.healthy, m.error) for m in status.members][2] == ("etcd3", False, "context deadline exceeded")
    assert status.healthy == 2 and status.leader == "etcd1"


def test_stacked_status_asks_the_masters(tmp_path):
    stacked = plan_lab(parse_lab("name: s", "t"))
    status = etcd_status(Etcdctl(stacked, FakeEtcd(stacked)))
    assert [m.name for m in status.members] == ["master1", "master2", "master3"]
    assert status.topology == "stacked"


def test_no_master_reachable_is_one_line(plan):
    with pytest.raises(LabError, match="no master answers over ssh"):
        etcd_status(Etcdctl(plan, FakeEtcd(plan, unreachable={"master1", "master2", "master3"})))


def test_snapshot_save_writes_a_verified_private_file(plan, tmp_path):
    fake = FakeEtcd(plan, leader="etcd3")
    target = tmp_path / "snap.db"
    saved = snapshot_save(Etcdctl(plan, fake), target)
    assert target.read_bytes() == SNAPSHOT and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert (saved.sha256, saved.bytes, saved.revision, saved.keys, saved.member, saved.via, saved.verified) == (
        hashlib.sha256(SNAPSHOT).hexdigest(), len(SNAPSHOT), 42, 7, "etcd3", "master1", True)
    [(_, save)] = [(n, a) for n, a in fake.calls if a[:3] == ["sudo", "-n", "sh"]]
    assert save[4] == script("etcd-snapshot-save.sh") and save[6] == "https://" + str(
        plan.node("etcd3").internal.address.ip) + ":2379"
    assert ("master1", ["sudo", "-n", "rm", "-f", save[7]]) in fake.calls  # the node's copy goes


def test_a_copy_that_does_not_match_is_not_written(plan, tmp_path):
    target = tmp_path / "snap.db"
    with pytest.raises(LabError, match="does not match its SHA-256"):
        snapshot_save(Etcdctl(plan, FakeEtcd(plan, corrupt_copy=True)), target)
    assert not target.exists()


def test_no_healthy_member_no_snapshot(plan, tmp_path):
    with pytest.raises(LabError, match="no healthy etcd member"):
        snapshot_save(Etcdctl(plan, FakeEtcd(plan, down={"etcd1", "etcd2", "etcd3"})), tmp_path / "x")


def test_restore_checks_every_copy_then_stops_restores_and_starts_every_member(plan, tmp_path):
    source = tmp_path / "snap.db"
    source.write_bytes(SNAPSHOT)
    fake = FakeEtcd(plan)
    done = snapshot_restore(Etcdctl(plan, fake), source, sleep=lambda _: None)
    assert (done.healthy, done.snapshot_revision, done.members) == (3, 42, ("etcd1", "etcd2", "etcd3"))
    order = [(node, argv[3] if argv[2] == "systemctl" else argv[5]) for node, argv in fake.calls
             if argv[2] in ("systemctl", "sh")]
    members = ["etcd1", "etcd2", "etcd3"]
    assert order == ([(m, "receive-snapshot.sh") for m in members] + [(m, "stop") for m in members]
                     + [(m, "etcd-restore.sh") for m in members] + [(m, "start") for m in members])
    for node, args in fake.restored:
        member = plan.node(node)
        assert args == ["/var/lib/labctl/etcd-restore.db", node, initial_cluster(plan), cluster_token(plan),
                        f"https://{member.internal.address.ip}:2380", DATA_DIR]


def test_restore_touches_nothing_when_a_copy_arrives_damaged(plan, tmp_path):
    source = tmp_path / "snap.db"
    source.write_bytes(SNAPSHOT)
    fake = FakeEtcd(plan)
    original = fake.script
    fake.script = lambda node, name, args, stdin: original(node, name, args, stdin[:-1])  # type: ignore[method-assign]
    with pytest.raises(LabError, match="did not arrive intact"):
        snapshot_restore(Etcdctl(plan, fake), source, sleep=lambda _: None)
    assert not any(argv[2] == "systemctl" for _, argv in fake.calls)


def test_restore_is_for_external_etcd_only(tmp_path):
    stacked = plan_lab(parse_lab("name: s", "t"))
    source = tmp_path / "snap.db"
    source.write_bytes(SNAPSHOT)
    with pytest.raises(LabError, match=r"kubernetes\.etcd: external"):
        snapshot_restore(Etcdctl(stacked, FakeEtcd(stacked)), source)


REMOTE_SCRIPTS = ("etcd-snapshot-save.sh", "etcd-restore.sh", "receive-snapshot.sh", "api-probe.sh")


def test_remote_scripts_reach_the_node_as_written_and_pass_shellcheck(tmp_path):
    for name in REMOTE_SCRIPTS:
        text = script(name)
        assert text.startswith("#!/bin/sh\n")
        assert shlex.split(shlex.join(["sh", "-c", text]))[2] == text  # what the node's shell hands to sh -c
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make test-deps installs it)")
    done = subprocess.run(["shellcheck", "-s", "sh", *(str(data_file("cloud-init", f"remote/{n}"))
                                                       for n in REMOTE_SCRIPTS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout
