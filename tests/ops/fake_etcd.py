"""A lab's etcd as the commands of labctl.ops.etcd and labctl.ops.drill see it over ssh: an in-memory
stand-in for ``Remote`` that answers etcdctl, systemctl and the remote scripts the way the real ones do
(JSON shapes from etcdctl 3.5, exit status 1 with partial output when an endpoint fails)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from labctl.access.ssh import Ran
from labctl.guest.etcd import etcd_members, quorum
from labctl.lab.plan import Plan

SNAPSHOT = b"etcd-snapshot-bytes\x00\x01"


@dataclass
class FakeEtcd:
    plan: Plan
    down: set[str] = field(default_factory=set)  # members whose etcd is stopped
    unreachable: set[str] = field(default_factory=set)  # nodes ssh cannot reach (exit 255)
    keys: dict[str, str] = field(default_factory=dict)
    revision: int = 42
    leader: str | None = None
    calls: list[tuple[str, list[str]]] = field(default_factory=list)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    corrupt_copy: bool = False

    def __post_init__(self) -> None:
        self.members = {m.client_url: m.name for m in etcd_members(self.plan)}
        self.leader = self.leader or next(iter(self.members.values()))

    @property
    def has_quorum(self) -> bool:
        return len(self.members) - len(self.down) >= quorum(len(self.members))

    def __call__(self, node: str, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = 0) -> Ran:
        argv = list(argv)
        self.calls.append((node, argv))
        if node in self.unreachable:
            return Ran(255, b"", b"ssh: connect to host: No route to host")
        if argv[:3] == ["sudo", "-n", "etcdctl"]:
            return self.etcdctl(argv[3:])
        if argv[:3] == ["sudo", "-n", "systemctl"]:
            return self.systemctl(node, argv[3])
        if argv[:3] == ["sudo", "-n", "sh"]:
            return self.script(node, argv[5], argv[6:], stdin)
        if argv[:3] == ["sudo", "-n", "cat"]:
            data = self.files.get((node, argv[3]), b"")
            return Ran(0, data + (b"!" if self.corrupt_copy else b""), b"")
        if argv[:3] == ["sudo", "-n", "rm"]:
            self.files.pop((node, argv[-1]), None)
            return Ran(0, b"", b"")
        return Ran(127, b"", f"fake: unknown command {argv[:3]}".encode())

    # --- etcdctl ---------------------------------------------------------------------------------

    def etcdctl(self, args: list[str]) -> Ran:
        urls = next(a.split("=", 1)[1] for a in args if a.startswith("--endpoints=")).split(",")
        words = [a for a in args if not a.startswith("--")]
        if words[:2] == ["endpoint", "health"]:
            rows = [{"endpoint": u, "health": self.healthy(u), "took": "1ms"} |
                    ({} if self.healthy(u) else {"error": "context deadline exceeded"}) for u in urls]
            return Ran(0 if all(r["health"] for r in rows) else 1, json.dumps(rows).encode(), b"")
        if words[:2] == ["endpoint", "status"]:
            rows = [self.status(u) for u in urls if self.members[u] not in self.down]
            return Ran(0 if len(rows) == len(urls) else 1, json.dumps(rows).encode(),
                       b"Failed to get the status of endpoint" if len(rows) < len(urls) else b"")
        if not self.has_quorum or all(self.members[u] in self.down for u in urls):
            return Ran(1, b"", b"Error: context deadline exceeded")
        if words[0] == "put":
            self.keys[words[1]] = words[2]
            self.revision += 1
            return Ran(0, b"OK\n", b"")
        if words[0] == "get":
            return Ran(0, (self.keys.get(words[1], "") + "\n").encode() if words[1] in self.keys else b"", b"")
        if words[0] == "del":
            prefix = words[1]
            self.keys = {k: v for k, v in self.keys.items() if not k.startswith(prefix)}
            return Ran(0, b"1\n", b"")
        return Ran(1, b"", b"fake etcdctl: unknown")

    def healthy(self, url: str) -> bool:
        return self.members[url] not in self.down and self.has_quorum

    def status(self, url: str) -> dict:
        ids = {name: 1000 + i for i, name in enumerate(self.members.values())}
        leader = ids[self.leader] if self.leader and self.has_quorum else 0
        return {"Endpoint": url, "Status": {"header": {"cluster_id": 7, "member_id": ids[self.members[url]],
                                                       "revision": self.revision, "raft_term": 3},
                                            "version": "3.5.16", "dbSize": 20480, "leader": leader, "raftTerm": 3}}

    # --- systemctl and the scripts ---------------------------------------------------------------

    def systemctl(self, node: str, action: str) -> Ran:
        if action == "stop":
            self.down.add(node)
            if self.leader == node:
                self.leader = next((n for n in self.members.values() if n not in self.down), None)
        elif action == "start":
            self.down.discard(node)
            if self.leader is None or self.leader in self.down:
                self.leader = node
        return Ran(0, b"", b"")

    def script(self, node: str, name: str, args: list[str], stdin: bytes) -> Ran:
        if name == "etcd-snapshot-save.sh":
            self.files[(node, args[1])] = SNAPSHOT
            return Ran(0, self.snapshot_report(SNAPSHOT), b"Snapshot saved")
        if name == "receive-snapshot.sh":
            self.files[(node, args[0])] = stdin
            return Ran(0, self.snapshot_report(stdin), b"")
        if name == "etcd-restore.sh":
            self.restored = [*getattr(self, "restored", []), (node, args)]
            return Ran(0, b"", b"")
        return Ran(2, b"", b"fake: unknown script")

    def snapshot_report(self, data: bytes) -> bytes:
        status = {"hash": 99, "revision": self.revision, "totalKey": 7, "totalSize": len(data)}
        return (json.dumps(status) + "\n\n" + hashlib.sha256(data).hexdigest() + "  /var/lib/labctl/x\n").encode()
