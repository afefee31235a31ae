"""What the e2e test drives: labctl against a private libvirtd, and the lab's nodes through labctl ssh.

Everything that talks to a VM address runs INSIDE the daemon's network namespace
(``ip netns exec``): ``labctl ssh``, and the small HTTP server on the NAT network's host side.
``labctl up/status/destroy`` run on the host: they reach libvirt by its unix socket and the
image server on 127.0.0.1, and read the console logs from files. Every subprocess is bounded.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import yaml

from labctl.access.readiness import parse_phases
from labctl.lab.config import parse_lab
from labctl.lab.plan import Plan, plan_lab

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
SSH_TIMEOUT = 180.0


@dataclass
class Timings:
    """Wall time of each phase of the run, in the order they ran."""

    started: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - began, 1)
            print(f"[e2e] {name}: {self.phases[name]:.1f}s", flush=True)

    def total(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def table(self) -> str:
        lines = [f"  {name:<44} {seconds:>8.1f}s" for name, seconds in self.phases.items()]
        return "\n".join(["e2e wall times:", *lines, f"  {'total':<44} {self.total():>8.1f}s"])

    def save(self, path: Path) -> None:
        data = {"phases": self.phases, "total": self.total(), **self.notes}
        path.write_text(json.dumps(data, indent=2) + "\n")


def lab_yaml(name: str, image: Mapping[str, str], *, masters: int, workers: int,
             cni: tuple[str, str] | None = None, memory: int = 512, disk: int = 4, k8s_memory: int | None = None,
             lbs: int = 1, etcd: int = 0, extra: Mapping[str, Any] | None = None) -> str:
    """lab.yaml of an e2e lab: TCG, the smallest sizes the roles allow, the test image; ``etcd`` members
    of an external etcd (0: stacked); ``extra`` is merged in (apt_mirror, kubernetes.apt_url…)."""
    size = {"cpus": 1, "memory": memory, "disk": disk}
    k8s_size = {**size, "memory": k8s_memory or memory}
    data: dict[str, Any] = {
        "name": name,
        "accel": "tcg",
        "image": dict(image),
        "kubernetes": {"enforce_minimums": False},
        "nodes": {"gateway": size, "lb": {**size, "count": lbs}, "master": {**k8s_size, "count": masters},
                  "worker": {**k8s_size, "count": workers}},
    }
    if etcd:
        data["kubernetes"]["etcd"] = "external"
        data["nodes"]["etcd"] = {**size, "count": etcd}
    if cni is not None:
        data["kubernetes"]["cni_manifest"] = {"url": cni[0], "sha256": cni[1]}
    for key, value in (extra or {}).items():
        data[key] = {**data[key], **value} if isinstance(value, Mapping) and key in data else value
    return yaml.safe_dump(data, sort_keys=False)


def plan_of(text: str) -> Plan:
    return plan_lab(parse_lab(text, "e2e lab.yaml"))


@dataclass
class Lab:
    """One lab under test: its lab.yaml, labctl's environment, the namespace to reach it from."""

    config: Path
    env: dict[str, str]
    netns: str
    console_dir: Path
    data_home: Path

    @cached_property
    def plan(self) -> Plan:
        return plan_of(self.config.read_text())

    @property
    def name(self) -> str:
        return self.plan.lab.name

    @property
    def state_dir(self) -> Path:
        return self.data_home / "labctl" / self.name

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    def labctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """labctl on the host (libvirt by unix socket, the image from 127.0.0.1)."""
        return subprocess.run([sys.executable, "-m", "labctl", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)

    def labctl_in_netns(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """labctl inside the namespace: the commands that reach the nodes over ssh (etcd, drill)."""
        return subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-m", "labctl", *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)

    def up(self, timeout: float, log: Path, argv: Sequence[str] | None = None) -> tuple[int, list[tuple[float, str]]]:
        """``labctl up`` (or ``argv``), its stderr streamed with elapsed times; (exit status, lines)."""
        argv = list(argv or [sys.executable, "-m", "labctl", "up", "--timeout", str(int(timeout))])
        return stream(argv, self.env, timeout + 120, log, prefix=f"[{self.name} up]")

    def ssh(self, node: str, *argv: str, stdin: str | None = None,
            timeout: float = SSH_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``labctl ssh NODE -- ARGV`` inside the namespace; ARGV is quoted for the node's shell."""
        return subprocess.run(self._ssh_command(node, argv), capture_output=True, text=True, env=self.env,
                              timeout=timeout, input=stdin if stdin is not None else "")

    def put(self, node: str, source: Path, target: str, mode: str = "0755", timeout: float = SSH_TIMEOUT) -> None:
        """Copy host file ``source`` to ``target`` on ``node`` (root's, ``mode``), streamed over ``labctl ssh``;
        it appears by rename, whole or not at all."""
        script = 'set -e; mkdir -p "${1%/*}"; cat >"$1.partial"; chmod "$2" "$1.partial"; mv -f "$1.partial" "$1"'
        with source.open("rb") as data:
            done = subprocess.run(self._ssh_command(node, ("sudo", "sh", "-c", script, "sh", target, mode)),
                                  stdin=data, capture_output=True, env=self.env, timeout=timeout)
        assert done.returncode == 0, f"{node}: copying {source} to {target} failed: {done.stderr[-2000:]!r}"

    def _ssh_command(self, node: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, sys.executable, "-m", "labctl", "ssh", node, "--",
                shlex.join(argv)]

    def each_node(self, call: Callable[[str], T]) -> dict[str, T]:
        """``call(node)`` for every node at once (each is bound by its own VM's CPU under TCG, not by the
        host's), by node name in boot order."""
        names = self.plan.node_names
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            return dict(zip(names, pool.map(call, names), strict=True))

    def ssh_ok(self, node: str, *argv: str, stdin: str | None = None, timeout: float = SSH_TIMEOUT) -> str:
        done = self.ssh(node, *argv, stdin=stdin, timeout=timeout)
        assert done.returncode == 0, f"{node}: {shlex.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}"
        return done.stdout

    def python(self, node: str, script: Path, *args: str) -> Any:
        """Run ``script`` on ``node`` as root (python3 reading stdin) and parse its JSON output."""
        out = self.ssh_ok(node, "sudo", "python3", "-", *args, stdin=script.read_text())
        return json.loads(out)

    def console_path(self, node: str) -> Path:
        return self.console_dir / f"{self.plan.node(node).domain_name}.console.log"

    def console(self, node: str) -> str:
        try:
            return self.console_path(node).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def phases(self, node: str) -> list[str]:
        """The node's phases in order; a line seen twice in a row (the script's own write to the serial
        console, then cloud-init's copy of its output) counts once."""
        seen = [f"{e.phase} {e.step}" if e.step else e.phase for e in parse_phases(self.console(node), node)]
        return [phase for i, phase in enumerate(seen) if i == 0 or seen[i - 1] != phase]

    def jsonl(self, node: str, path: str) -> list[dict[str, Any]]:
        """A JSON-lines file on ``node`` (read as root), parsed. A node powered off by a drill (``virsh destroy``)
        can leave the tail of an append it had not flushed as NUL bytes (ext4 grew the file, the data never
        reached the disk): those are dropped, with what they held; every record must still parse."""
        text = self.ssh_ok(node, "sudo", "cat", path).replace("\x00", "")
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def stream(argv: Sequence[str], env: Mapping[str, str], timeout: float, log: Path,
           prefix: str) -> tuple[int, list[tuple[float, str]]]:
    """Run ``argv``; print and keep each stderr/stdout line with seconds since start; kill at ``timeout``."""
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)

    def pump() -> None:
        assert proc.stdout is not None
        with log.open("a", encoding="utf-8") as out:
            for line in proc.stdout:
                elapsed = time.monotonic() - started
                lines.append((elapsed, line.rstrip("\n")))
                out.write(f"{elapsed:7.1f} {line}")
                out.flush()
                print(f"{prefix} {elapsed:6.0f}s {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        code = -9
        lines.append((time.monotonic() - started, f"(killed after {timeout:.0f}s)"))
    reader.join(timeout=10)
    return code, lines


def phase_timeline(lines: Sequence[tuple[float, str]], nodes: Sequence[str]) -> dict[str, list[tuple[float, str]]]:
    """Per node, (seconds since `up` started, phase) from up's one-line-per-change output."""
    timeline: dict[str, list[tuple[float, str]]] = {node: [] for node in nodes}
    for elapsed, line in lines:
        node, sep, phase = line.partition(": ")
        if sep and node in timeline and " " not in node:
            timeline[node].append((round(elapsed, 1), phase))
    return timeline


class NetnsServer:
    """netns_server.py inside the namespace on 0.0.0.0:PORT: /whoami and the files of ``routes``
    (URL prefix -> file or directory); ended by its pid."""

    def __init__(self, netns: str, port: int, log: Path, routes: Mapping[str, Path] | None = None) -> None:
        self.netns, self.port, self.log, self.routes = netns, port, log, dict(routes or {})
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20) -> NetnsServer:
        # `ip netns exec` execs the command: the pid we get is the server's own.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, str(HERE / "netns_server.py"), str(self.port),
             str(self.log), *(f"{prefix}={path}" for prefix, path in self.routes.items())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not ready or "listening" not in ready[0]:
            self.stop()
            raise RuntimeError(f"the namespace server did not start: {ready}")
        return self

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
