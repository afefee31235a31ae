"""``labctl etcd``: status, snapshot save and snapshot restore of the lab's etcd, over ssh.

The host needs no etcdctl: every etcd command runs on a master (each carries Debian's etcd-client) with
kubeadm's file layout, the apiserver's client certificate, against every member (the masters when stacked,
etcd1..N when external); snapshots travel back and forth over the same ssh. Plain functions that take the
plan and a :class:`Remote` (how to run a command on a node), so they are tested without a lab.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labctl.access.ssh import Ran
from labctl.errors import LabError
from labctl.guest.etcd import (
    APISERVER_CLIENT_CERT,
    APISERVER_CLIENT_KEY,
    DATA_DIR,
    ETCD_CA,
    Member,
    cluster_token,
    endpoints,
    etcd_members,
    initial_cluster,
    is_external,
    quorum,
)
from labctl.lab.plan import Plan
from labctl.resources import read_text

REMOTE_DIR = "/var/lib/labctl"
REMOTE_SNAPSHOT = f"{REMOTE_DIR}/etcd-snapshot.db"
REMOTE_RESTORE = f"{REMOTE_DIR}/etcd-restore.db"
SSH_TIMEOUT = 120.0
SNAPSHOT_TIMEOUT = 600.0
HEALTHY_TIMEOUT = 300.0  # seconds a restored cluster gets to be healthy again


class Remote(Protocol):
    """Runs ``argv`` on a node (over ssh), ``stdin`` in; never raises for the command's exit status."""

    def __call__(self, node: str, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = SSH_TIMEOUT) -> Ran: ...


def script(name: str) -> str:
    """A static script that labctl runs on a node (cloud-init/remote/NAME), as ``sh -c`` takes it."""
    return read_text("cloud-init", f"remote/{name}")


def sh(name: str, *args: str, root: bool = True) -> list[str]:
    """``[sudo] sh -c <script> <name> ARGS…``: a static script with its arguments, none spliced into it."""
    return [*(("sudo", "-n") if root else ()), "sh", "-c", script(name), name, *args]


@dataclass(frozen=True)
class MemberStatus:
    name: str
    endpoint: str
    healthy: bool
    leader: bool = False
    revision: int | None = None
    db_size: int | None = None
    version: str | None = None
    raft_term: int | None = None
    member_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class EtcdStatus:
    topology: str
    via: str  # the master etcdctl ran on
    members: tuple[MemberStatus, ...]

    @property
    def quorum(self) -> int:
        return quorum(len(self.members))

    @property
    def healthy(self) -> int:
        return sum(member.healthy for member in self.members)

    @property
    def leader(self) -> str | None:
        return next((member.name for member in self.members if member.leader), None)

    def as_dict(self) -> dict[str, Any]:
        return {"topology": self.topology, "via": self.via, "quorum": self.quorum, "healthy": self.healthy,
                "has_quorum": self.healthy >= self.quorum, "leader": self.leader,
                "members": [asdict(member) for member in self.members]}


@dataclass
class Etcdctl:
    """etcdctl on the first master that answers ssh, with the apiserver's client certificate."""

    plan: Plan
    remote: Remote
    masters: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.masters = self.masters or [node.name for node in self.plan.nodes_of("master")]

    def flags(self, targets: Sequence[Member] | None = None, command_timeout: int = 10) -> list[str]:
        urls = ",".join(m.client_url for m in targets) if targets is not None else endpoints(self.plan)
        return [f"--endpoints={urls}", f"--cacert={ETCD_CA}", f"--cert={APISERVER_CLIENT_CERT}",
                f"--key={APISERVER_CLIENT_KEY}", "--dial-timeout=5s", f"--command-timeout={command_timeout}s"]

    def run(self, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = SSH_TIMEOUT) -> Ran:
        """``argv`` on the first master that ssh reaches (255: ssh failed; try the next one)."""
        ran = Ran(255, b"", b"no master to run etcdctl on")
        for index, node in enumerate(list(self.masters)):
            ran = self.remote(node, argv, stdin=stdin, timeout=timeout)
            if ran.code != 255:
                self.masters = self.masters[index:] + self.masters[:index]  # keep using the one that answered
                return ran
        raise LabError(f"no master answers over ssh: {ran.last_line()}", "is the lab up? `labctl status`")

    @property
    def via(self) -> str:
        return self.masters[0]

    def etcdctl(self, *args: str, targets: Sequence[Member] | None = None, command_timeout: int = 10) -> Ran:
        return self.run(["sudo", "-n", "etcdctl", *self.flags(targets, command_timeout), *args])


def etcd_status(etcdctl: Etcdctl) -> EtcdStatus:
    """Every member's health, and from those that answer: leader, revision, DB size, version."""
    members = etcd_members(etcdctl.plan)
    health = _json_list(etcdctl.etcdctl("endpoint", "health", "-w", "json"))
    status = _json_list(etcdctl.etcdctl("endpoint", "status", "-w", "json"))
    by_health = {entry.get("endpoint"): entry for entry in health}
    by_status = {entry.get("Endpoint"): entry.get("Status") or {} for entry in status}
    rows = []
    for member in members:
        said = by_health.get(member.client_url, {})
        state = by_status.get(member.client_url)
        error = said.get("error") or (None if said else "no answer")
        if state is None:
            rows.append(MemberStatus(member.name, member.client_url, bool(said.get("health")), error=error))
            continue
        header = state.get("header") or {}
        member_id = header.get("member_id")
        rows.append(MemberStatus(
            member.name, member.client_url, bool(said.get("health")), leader=member_id == state.get("leader"),
            revision=header.get("revision"), db_size=state.get("dbSize"), version=state.get("version"),
            raft_term=state.get("raftTerm"), member_id=f"{member_id:x}" if isinstance(member_id, int) else None,
            error=error))
    return EtcdStatus(etcdctl.plan.lab.kubernetes.etcd, etcdctl.via, tuple(rows))


def _json_list(ran: Ran) -> list[dict[str, Any]]:
    """etcdctl's ``-w json`` list output; it prints what it got even when some endpoints failed (exit 1)."""
    try:
        data = json.loads(ran.text) if ran.text.strip() else []
    except ValueError as err:
        raise LabError(f"etcdctl said something that is not JSON: {ran.last_line()}") from err
    if ran.code not in (0, 1) or not isinstance(data, list):
        raise LabError(f"etcdctl failed: {ran.last_line()}")
    return [entry for entry in data if isinstance(entry, dict)]


# --- snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    path: str
    bytes: int
    sha256: str
    revision: int
    keys: int
    hash: int
    member: str  # the member it was taken from
    via: str  # the node that took it and whose copy was compared
    verified: bool = True


def snapshot_save(etcdctl: Etcdctl, target: Path, note: Callable[[str], None] = lambda _: None) -> Snapshot:
    """Take a snapshot from the leader (else a healthy member) on a master, check it there (etcd reads it back),
    copy it here, and compare the copy's SHA-256 with the node's before writing ``target`` (0600)."""
    status = etcd_status(etcdctl)
    source = next((m for m in status.members if m.leader), None) or next((m for m in status.members if m.healthy),
                                                                         None)
    if source is None:
        raise LabError("no healthy etcd member to take a snapshot from", "see `labctl etcd status`")
    note(f"taking a snapshot of {source.name} ({source.endpoint}) on {etcdctl.via}")
    ran = etcdctl.run(sh("etcd-snapshot-save.sh", source.endpoint, REMOTE_SNAPSHOT, ETCD_CA, APISERVER_CLIENT_CERT,
                         APISERVER_CLIENT_KEY), timeout=SNAPSHOT_TIMEOUT)
    if ran.code != 0:
        raise LabError(f"etcd snapshot save on {etcdctl.via} failed: {ran.last_line()}")
    via = etcdctl.via  # the master that holds the file now
    info, remote_sha = _status_and_sha(ran, via)
    try:
        copied = etcdctl.remote(via, ["sudo", "-n", "cat", REMOTE_SNAPSHOT], timeout=SNAPSHOT_TIMEOUT)
    finally:
        etcdctl.remote(via, ["sudo", "-n", "rm", "-f", REMOTE_SNAPSHOT])
    if copied.code != 0:
        raise LabError(f"copying the snapshot from {via} failed: {copied.last_line()}")
    digest = hashlib.sha256(copied.out).hexdigest()
    if digest != remote_sha:
        raise LabError(f"the snapshot copied from {via} does not match its SHA-256 there "
                       f"({digest[:12]}… ≠ {remote_sha[:12]}…); nothing was written")
    _write_private(target, copied.out)
    return Snapshot(str(target), len(copied.out), digest, int(info["revision"]), int(info["totalKey"]),
                    int(info["hash"]), source.name, via)


def _status_and_sha(ran: Ran, node: str) -> tuple[dict[str, Any], str]:
    """The snapshot status JSON and SHA-256 a remote script printed (status line, blank, sha256sum line)."""
    lines = [line for line in ran.text.splitlines() if line.strip()]
    try:
        info = json.loads(lines[0])
        sha = lines[-1].split()[0]
        if len(sha) != 64 or not {"revision", "totalKey", "hash"} <= info.keys():
            raise ValueError(lines[-1])
    except (IndexError, ValueError) as err:
        raise LabError(f"{node}: the snapshot could not be read back: {ran.last_line()}") from err
    return info, sha


def _write_private(target: Path, data: bytes) -> None:
    """``data`` to ``target`` atomically, 0600 from the start (etcd holds the cluster's Secrets)."""
    target = target.expanduser()
    try:
        fd, part = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(part, target)
    except OSError as err:
        raise LabError(f"{target}: cannot write: {err.strerror or err}") from err


@dataclass(frozen=True)
class Restored:
    snapshot: str
    sha256: str
    revision: int  # the restored cluster's, once healthy
    snapshot_revision: int
    healthy: int
    leader: str | None
    members: tuple[str, ...]
    seconds: float


def snapshot_restore(etcdctl: Etcdctl, source: Path, note: Callable[[str], None] = lambda _: None,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> Restored:
    """Restore an external etcd from ``source``: the file goes to every member and is checked there, every
    member stops, each is restored with the plan's name and peer URL into a fresh data dir (the old one kept
    beside it), all start, and the cluster must be healthy again within :data:`HEALTHY_TIMEOUT`."""
    plan = etcdctl.plan
    if not is_external(plan):
        raise LabError("etcd snapshot restore works on labs with kubernetes.etcd: external",
                       "a stacked etcd lives in kubeadm's static pods: follow kubeadm's restore procedure on the "
                       "masters, or rebuild the lab")
    try:
        data = source.read_bytes()
    except OSError as err:
        raise LabError(f"{source}: cannot read: {err.strerror or err}") from err
    began, digest = clock(), hashlib.sha256(data).hexdigest()
    members = etcd_members(plan)
    revision = 0
    for member in members:  # every copy is checked before any member is touched
        ran = etcdctl.remote(member.node, sh("receive-snapshot.sh", REMOTE_RESTORE), stdin=data,
                             timeout=SNAPSHOT_TIMEOUT)
        info, sha = _status_and_sha(ran, member.node) if ran.code == 0 else ({}, "")
        if sha != digest:
            raise LabError(f"{member.node}: the snapshot did not arrive intact or is not an etcd snapshot: "
                           f"{ran.last_line()}", "nothing was changed")
        revision = int(info["revision"])
    note(f"snapshot {source.name} (revision {revision}) is on every member; stopping etcd on all of them")
    for member in members:
        _checked(etcdctl.remote(member.node, ["sudo", "-n", "systemctl", "stop", "etcd.service"]), member.node,
                 "stopping etcd")
    for member in members:
        _checked(etcdctl.remote(member.node, sh("etcd-restore.sh", REMOTE_RESTORE, member.name, initial_cluster(plan),
                                                cluster_token(plan), member.peer_url, DATA_DIR),
                                timeout=SNAPSHOT_TIMEOUT), member.node, "restoring the snapshot")
        note(f"{member.node}: restored as {member.name} ({member.peer_url}); its old data dir is kept beside it")
    start_members(etcdctl, members)
    status = wait_healthy(etcdctl, len(members), HEALTHY_TIMEOUT, clock, sleep)
    now_revision = max((m.revision or 0) for m in status.members)
    return Restored(str(source), digest, now_revision, revision, status.healthy, status.leader,
                    tuple(m.name for m in members), round(clock() - began, 1))


def start_members(etcdctl: Etcdctl, members: Sequence[Member]) -> None:
    """Start etcd on ``members`` without waiting: a member is ready only once a majority runs."""
    for member in members:
        _checked(etcdctl.remote(member.node, ["sudo", "-n", "systemctl", "start", "--no-block", "etcd.service"]),
                 member.node, "starting etcd")


def wait_healthy(etcdctl: Etcdctl, wanted: int, timeout: float, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> EtcdStatus:
    """Poll the status until ``wanted`` members are healthy and one leads; the last status after ``timeout``
    is an error."""
    deadline = clock() + timeout
    while True:
        status = etcd_status(etcdctl)
        if status.healthy >= wanted and status.leader:
            return status
        if clock() >= deadline:
            raise LabError(f"etcd: {status.healthy} of {len(status.members)} members healthy after {int(timeout)}s",
                           "look with `labctl etcd status` and `labctl ssh etcd1 -- sudo journalctl -u etcd`")
        sleep(3.0)


def _checked(ran: Ran, node: str, what: str) -> Ran:
    if ran.code != 0:
        raise LabError(f"{node}: {what} failed: {ran.last_line()}")
    return ran
