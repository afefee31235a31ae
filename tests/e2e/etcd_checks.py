"""The external-etcd checks, as functions of a running lab (:class:`tests.e2e.lab.Lab`) whose
``kubernetes.etcd`` is ``external``: real etcd (Debian's etcd-server) on etcd1..N, the kubeadm stand-in on
the masters. Any e2e module with such a lab calls them in this order (each leaves the lab as it found it,
but for the keys the last ones write):

    check_init_config(lab)               kubeadm's init config names the plan's members and the host's files
    check_cluster_health(lab)            from master1, etcdctl ... endpoint health --cluster: all healthy
    check_status(lab)                    `labctl etcd status --output json`: every member, one leader
    check_snapshot_save(lab, work)       `labctl etcd snapshot save`: a verified file on the host
    check_member_drill(lab)              `labctl drill etcd-member`: holds with one down, quorum lost with a
                                         majority down, recovered after
    check_restore(lab, work)             a restore brings back a key written before the snapshot, not one after

Everything that reaches a node runs inside the lab's network namespace.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from pathlib import Path
from typing import Any

import yaml

from labctl.guest.etcd import APISERVER_CLIENT_CERT, APISERVER_CLIENT_KEY, ETCD_CA, endpoints, etcd_members, quorum
from tests.e2e.lab import Lab

STANDIN_CALLS = "/var/lib/labctl-standin/calls.jsonl"
HOST_FILES = {"etcd/ca.crt": "etcd/ca.crt", "apiserver-etcd-client.crt": "apiserver-etcd-client.crt",
              "apiserver-etcd-client.key": "apiserver-etcd-client.key"}  # path under the node's pki -> host's pki
KEY_PREFIX = "/labctl-e2e/"


def etcdctl(lab: Lab, *args: str, node: str = "master1", timeout: float = 120) -> str:
    """etcdctl on ``node`` (a master) with the apiserver's client certificate against every member."""
    argv = ["sudo", "etcdctl", f"--endpoints={endpoints(lab.plan)}", f"--cacert={ETCD_CA}",
            f"--cert={APISERVER_CLIENT_CERT}", f"--key={APISERVER_CLIENT_KEY}", "--command-timeout=20s", *args]
    return lab.ssh_ok(node, *argv, timeout=timeout)


def labctl_json(lab: Lab, *args: str, timeout: float = 900) -> Any:
    done = lab.labctl_in_netns(*args, "--output", "json", timeout=timeout)
    assert done.returncode == 0, f"labctl {shlex.join(args)} exited {done.returncode}: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def check_init_config(lab: Lab) -> dict[str, Any]:
    """The stand-in kubeadm's init config: etcd.external with the plan's endpoints and kubeadm's file layout,
    those files byte-identical to the host's when kubeadm ran, and every endpoint answered its preflight."""
    calls = [json.loads(line) for line in lab.ssh_ok("master1", "sudo", "cat", STANDIN_CALLS).splitlines() if line]
    [init] = [c for c in calls if c["tool"] == "kubeadm" and c["argv"][:1] == ["init"]]
    assert init["exit"] == 0, init
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(init["config"]) if doc}
    external = docs["ClusterConfiguration"]["etcd"]["external"]
    wanted = [member.client_url for member in etcd_members(lab.plan)]
    assert external == {"endpoints": wanted, "caFile": ETCD_CA, "certFile": APISERVER_CLIENT_CERT,
                        "keyFile": APISERVER_CLIENT_KEY}, external
    on_host = {name: hashlib.sha256((lab.pki_dir / host).read_bytes()).hexdigest() for name, host in HOST_FILES.items()}
    assert {name: init["pki"].get(name) for name in HOST_FILES} == on_host, "etcd files differ from the host's"
    assert "etcd/ca.key" not in init["pki"], "a master of an external etcd must not hold the etcd CA key"
    assert sorted(init["etcd_external_versions"]) == sorted(wanted), init["etcd_external_versions"]
    return {"endpoints": wanted, "versions": init["etcd_external_versions"]}


def check_cluster_health(lab: Lab) -> list[dict[str, Any]]:
    """From master1, ``etcdctl endpoint health --cluster`` with the apiserver's certificate: every member."""
    health = json.loads(etcdctl(lab, "endpoint", "health", "--cluster", "-w", "json"))
    members = etcd_members(lab.plan)
    assert sorted(h["endpoint"] for h in health) == sorted(m.client_url for m in members), health
    assert all(h["health"] for h in health), health
    return health


def check_status(lab: Lab) -> dict[str, Any]:
    status = labctl_json(lab, "etcd", "status")
    names = [m.name for m in etcd_members(lab.plan)]
    assert [m["name"] for m in status["members"]] == names, status
    assert all(m["healthy"] for m in status["members"]), status
    assert sum(m["leader"] for m in status["members"]) == 1, status
    assert status["topology"] == "external" and status["quorum"] == quorum(len(names)), status
    return status


def check_snapshot_save(lab: Lab, work: Path) -> dict[str, Any]:
    # With stand-in apiservers nothing else writes to an external etcd: one key, so the snapshot holds one.
    etcdctl(lab, "put", f"{KEY_PREFIX}snapshot", "saved")
    target = work / "etcd-snapshot.db"
    saved = labctl_json(lab, "etcd", "snapshot", "save", str(target))
    data = target.read_bytes()
    assert saved["sha256"] == hashlib.sha256(data).hexdigest() and saved["bytes"] == len(data), saved
    assert saved["verified"] and saved["revision"] > 0 and saved["keys"] > 0, saved
    return saved


def check_member_drill(lab: Lab) -> dict[str, Any]:
    """`labctl drill etcd-member`: writable with one member down, quorum lost (writes refused) with a majority
    down, and every member healthy and writable again after; the lab's keys survive."""
    began = time.monotonic()
    drill = labctl_json(lab, "drill", "etcd-member")
    assert drill["held"], json.dumps(drill, indent=2)
    steps = {step["name"]: step for step in drill["steps"]}
    assert steps["one member down"]["observed"]["write"] == "ok", steps
    assert steps["majority down"]["observed"]["write"] == "refused", steps
    assert steps["members back"]["observed"]["healthy"] == len(etcd_members(lab.plan)), steps
    drill["took_s"] = round(time.monotonic() - began, 1)
    return drill


def check_restore(lab: Lab, work: Path) -> dict[str, Any]:
    """Write a key, snapshot, write another, restore: the first is back, the second is gone, all healthy."""
    stamp = str(int(time.time()))
    before, after = f"{KEY_PREFIX}{stamp}/before", f"{KEY_PREFIX}{stamp}/after"
    etcdctl(lab, "put", before, "kept")
    snapshot = work / "etcd-before-restore.db"
    saved = labctl_json(lab, "etcd", "snapshot", "save", str(snapshot))
    etcdctl(lab, "put", after, "lost")
    restored = labctl_json(lab, "etcd", "snapshot", "restore", str(snapshot), "--yes", timeout=1500)
    assert restored["healthy"] == len(etcd_members(lab.plan)), restored
    assert restored["revision"] >= saved["revision"], (restored, saved)
    assert etcdctl(lab, "get", before, "--print-value-only").strip() == "kept"
    assert etcdctl(lab, "get", after, "--print-value-only").strip() == ""
    check_cluster_health(lab)
    return {"saved": saved, "restored": restored}
