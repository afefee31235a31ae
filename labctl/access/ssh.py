"""Reaching the nodes from the host: OpenSSH argument lists, the lab's known_hosts and ssh configs.

Everything that builds text or argv is pure; writing the two small files and exec'ing are separate.
Host keys are pinned (``StrictHostKeyChecking yes`` against a known_hosts made from the lab's own
host keys, and nothing else), so ``labctl ssh`` never asks to trust a key and never trusts a stale one.
"""

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from labctl.errors import ConfigError, LabError, StateError
from labctl.lab.plan import NodePlan, Plan
from labctl.lab.state import LabState, write_private
from labctl.lab.validate import suggestion
from labctl.pki.secrets import LabSecrets, known_hosts_lines

CONNECT_TIMEOUT = 10  # seconds: a stopped node fails fast instead of hanging a script
KNOWN_HOSTS = "known_hosts"
JUMP_CONFIG = "ssh_config"  # read by ssh -F, and by the jump hop that `ssh -J` starts with the same -F
FOLLOW_INTERVAL = 0.5  # seconds between polls of a followed console log

Exec = Callable[[str, Sequence[str]], object]


def find_node(plan: Plan, name: str) -> NodePlan:
    """The node called ``name``; an unknown name is a ConfigError that lists the valid ones."""
    if name in plan.node_names:
        return plan.node(name)
    hint = suggestion(name, plan.node_names)
    raise ConfigError("", f"unknown node {name!r}; nodes of lab {plan.lab.name}: {', '.join(plan.node_names)}", hint)


def needs_gateway(plan: Plan, backend_is_local: bool) -> bool:
    """Whether the internal network may be unreachable from here, so ssh must jump via the gateway.

    Only an isolated network on this host gives the host an internal address; a bridged one
    is the user's LAN (maybe not routed here), and a remote hypervisor's networks are its own.
    """
    return plan.network("internal").mode == "bridge" or not backend_is_local


def gateway_address(plan: Plan) -> str:
    """The gateway's address on the NAT network: always reachable from the hypervisor host."""
    return str(next(nic.address.ip for nic in plan.node("gateway").nics if nic.network == "nat"))


def node_address(plan: Plan, node: NodePlan, via_gateway: bool) -> str:
    """Where ssh connects: the internal address, but the gateway itself by its NAT address when jumping."""
    return gateway_address(plan) if via_gateway and node.role == "gateway" else str(node.internal.address.ip)


def _config_word(path: Path) -> str:
    """A path as one ssh_config word (also what ``-o`` takes): ``%`` doubled, since it starts a token
    in IdentityFile and UserKnownHostsFile, and quoted when it holds whitespace."""
    text = str(path).replace("%", "%%")
    if '"' in text or "\n" in text:
        raise StateError(f"{path}: ssh cannot be given a path containing a quote or newline")
    return f'"{text}"' if any(char.isspace() for char in text) else text


def _pinning_options(state: LabState) -> list[tuple[str, str]]:
    """The ssh options every connection to a lab node uses: the lab key, and only the lab's host keys.
    (IdentityFile rather than ``-i``: ``-i`` neither quotes nor escapes ``%``.)"""
    return [
        ("IdentityFile", _config_word(state.ssh_key_path)),
        ("IdentitiesOnly", "yes"),
        ("UserKnownHostsFile", _config_word(state.root / KNOWN_HOSTS)),
        ("GlobalKnownHostsFile", "/dev/null"),
        ("StrictHostKeyChecking", "yes"),
        ("ConnectTimeout", str(CONNECT_TIMEOUT)),
    ]


def jump_config_text(plan: Plan, state: LabState) -> str:
    """The ssh_config given with ``-F``: `ssh -J` passes ``-F`` (and no other option) on to the jump hop,
    so this is how the hop to the gateway gets the lab key and known_hosts. Scoped to the lab's addresses,
    so a first hop to a remote hypervisor keeps ssh's defaults."""
    addresses = [gateway_address(plan)] + [str(node.internal.address.ip) for node in plan.nodes]
    lines = [f"# Written by labctl for lab {plan.lab.name}; rewritten on every `labctl ssh`.",
             "Host " + " ".join(addresses),
             f"    User {plan.lab.user}"]
    lines += [f"    {key} {value}" for key, value in _pinning_options(state)]
    return "\n".join(lines) + "\n"


def write_known_hosts(state: LabState, plan: Plan, secrets: LabSecrets) -> Path:
    """``<state>/known_hosts`` (0600): every node's pinned host key under its name, FQDN and addresses."""
    state.ensure()
    path = state.root / KNOWN_HOSTS
    write_private(path, ("\n".join(known_hosts_lines(plan, secrets)) + "\n").encode())
    return path


def write_ssh_files(state: LabState, plan: Plan, secrets: LabSecrets) -> None:
    """The known_hosts and the ``-F`` ssh_config that :func:`ssh_argv` refers to."""
    write_known_hosts(state, plan, secrets)
    write_private(state.root / JUMP_CONFIG, jump_config_text(plan, state).encode())


def _check_passable(config: Path) -> None:
    """ssh -J hands ``-F <config>`` to the jump hop inside a shell command line, unquoted and %-expanded."""
    if not _SHELL_SAFE.fullmatch(str(config)):
        raise StateError(f"{config}: ssh cannot pass this path to its jump host (spaces, % or shell characters)",
                         "set XDG_DATA_HOME to a plain path, or use `labctl ssh-config` with your own ssh config")


_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./@+,:=-]+")
_HOP = re.compile(r"([A-Za-z0-9_.-]+@)?([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


def _checked_hop(hop: str | None) -> str | None:
    """A first hop as ssh -J takes it; it ends up in a shell command line, so nothing else is let through."""
    if hop is not None and not _HOP.fullmatch(hop):
        raise ConfigError("--jump", f"expected [USER@]HOST[:PORT], got {hop!r}")
    return hop


def ssh_argv(plan: Plan, state: LabState, node_name: str, command: Sequence[str], *,
             via_gateway: bool, first_hop: str | None = None) -> list[str]:
    """The OpenSSH command line that reaches ``node_name`` as the lab user, with host keys pinned.

    ``via_gateway`` jumps through the gateway's NAT address; ``first_hop`` (``[user@]host[:port]``,
    e.g. a remote hypervisor, which reaches the NAT network) is jumped through before that, with ssh's
    defaults. ``command`` is passed as ssh passes it: joined by spaces and run by the node's login shell.
    """
    node = find_node(plan, node_name)
    user = plan.lab.user
    first_hop = _checked_hop(first_hop)
    via_gateway = via_gateway or bool(first_hop)
    argv = ["ssh", "-F", str(state.root / JUMP_CONFIG)]
    for key, value in _pinning_options(state):
        argv += ["-o", f"{key}={value}"]
    if command:
        argv += ["-o", "BatchMode=yes"]  # a script fails at once instead of waiting for a prompt
    hops = [first_hop] if first_hop else []
    if via_gateway and node.role != "gateway":
        hops.append(f"{user}@{gateway_address(plan)}")
    if hops:
        _check_passable(state.root / JUMP_CONFIG)
        argv += ["-J", ",".join(hops)]
    # "--" ends ssh's options: whatever follows the destination is the remote command, never an option.
    return [*argv, "--", f"{user}@{node_address(plan, node, via_gateway)}", *command]


@dataclass(frozen=True)
class Route:
    """How this host reaches a lab's nodes, with the lab's ssh files written."""

    plan: Plan
    state: LabState
    via_gateway: bool
    first_hop: str | None = None

    def argv(self, node: str, command: Sequence[str]) -> list[str]:
        return ssh_argv(self.plan, self.state, node, command, via_gateway=self.via_gateway,
                        first_hop=self.first_hop)


def open_route(plan: Plan, state: LabState, secrets: LabSecrets, *, local: bool, jump: str | None) -> Route:
    """Write the lab's known_hosts and ssh config, and say how to reach its nodes: ``local`` when the
    hypervisor runs on this host, ``jump`` the first hop towards a remote one."""
    write_ssh_files(state, plan, secrets)
    return Route(plan, state, needs_gateway(plan, local), jump)


def ssh_config_text(plan: Plan, state: LabState, *, via_gateway: bool = False, first_hop: str | None = None) -> str:
    """Host blocks ``<lab>-<node>`` for ``~/.ssh/config`` (``ssh k8s-master1``), host keys pinned."""
    lab = plan.lab.name
    first_hop = _checked_hop(first_hop)
    via_gateway = via_gateway or bool(first_hop)
    blocks = [f"# labctl lab {lab}: append to ~/.ssh/config (or Include it), then `ssh {lab}-<node>`."]
    for node in plan.nodes:
        lines = [f"Host {lab}-{node.name}",
                 f"    HostName {node_address(plan, node, via_gateway)}",
                 f"    User {plan.lab.user}"]
        lines += [f"    {key} {value}" for key, value in _pinning_options(state)]
        if node.role == "gateway" and first_hop:
            lines.append(f"    ProxyJump {first_hop}")
        elif node.role != "gateway" and via_gateway:
            lines.append(f"    ProxyJump {lab}-gateway")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def exec_argv(argv: Sequence[str], execvp: Exec | None = None) -> NoReturn:
    """Replace this process with ``argv`` (its terminal and exit code become the command's)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        (execvp or os.execvp)(argv[0], list(argv))
    except OSError as err:
        raise _cannot_run(argv[0], err) from err
    raise SystemExit(0)  # only an injected execvp returns


_PACKAGES = {"ssh": "openssh-client", "virsh": "libvirt-clients"}


def _cannot_run(program: str, err: OSError) -> LabError:
    if isinstance(err, FileNotFoundError):
        return LabError(f"{program} not found", f"install it ({_PACKAGES.get(program, program)})")
    return LabError(f"cannot run {program}: {err.strerror or err}")


def run_output(argv: Sequence[str], timeout: float) -> str | None:
    """Run ``argv`` (an ssh query), bounded by ``timeout``; its stdout, or None when it failed or took too long."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return None
    except OSError as err:
        raise _cannot_run(argv[0], err) from err
    return done.stdout if done.returncode == 0 else None


def run_checked(argv: Sequence[str], what: str, timeout: float, data: str = "") -> str:
    """Run ``argv`` (an ssh command) with ``data`` on its stdin, bounded by ``timeout``; its stdout.
    A failure is a one-line LabError naming ``what`` and the last line the command printed."""
    try:
        done = subprocess.run(list(argv), input=data, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise LabError(f"{what}: no answer within {int(timeout)}s") from err
    except OSError as err:
        raise _cannot_run(argv[0], err) from err
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
        raise LabError(f"{what}: {said}")
    return done.stdout


def read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """The bytes of ``path`` after ``offset``, and the new offset; a truncated file is read from its start."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < offset:
            offset = 0  # rotated or truncated (a new boot of the node)
        handle.seek(offset)
        data = handle.read()
    return data, offset + len(data)


def follow_log(path: Path, out: BinaryIO, *, follow: bool,
               sleep: Callable[[float], None] = time.sleep, polls: int | None = None) -> None:
    """Copy ``path`` to ``out``; with ``follow``, keep copying what is appended every FOLLOW_INTERVAL
    seconds until interrupted (or ``polls`` polls, for tests)."""
    data, offset = read_from(path, 0)
    out.write(data)
    out.flush()
    while follow and (polls is None or polls > 0):
        sleep(FOLLOW_INTERVAL)
        data, offset = read_from(path, offset)
        if data:
            out.write(data)
            out.flush()
        polls = None if polls is None else polls - 1


@dataclass(frozen=True)
class Ran:
    """What a command run on a node over ssh did: exit status (255: ssh itself failed), stdout, stderr."""

    code: int
    out: bytes
    err: bytes

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    def last_line(self) -> str:
        said = (self.err.decode("utf-8", "replace").strip() or self.text.strip() or f"exit {self.code}")
        return said.splitlines()[-1]


def remote_command(argv: Sequence[str]) -> tuple[str]:
    """``argv`` as the one command word ssh hands to the node's shell (each word quoted for it)."""
    return (shlex.join(argv),)


def run_remote(route: Route, node: str, argv: Sequence[str], *, stdin: bytes = b"", timeout: float) -> Ran:
    """Run ``argv`` on ``node`` over ``route`` with ``stdin``, bounded by ``timeout``; bytes in and out,
    never raising for the command's own exit status (the caller judges it)."""
    full = route.argv(node, remote_command(argv))
    try:
        done = subprocess.run(full, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise LabError(f"{node}: {shlex.join(argv[:3])}…: no answer within {int(timeout)}s") from err
    except OSError as err:
        raise _cannot_run(full[0], err) from err
    return Ran(done.returncode, done.stdout, done.stderr)


class RemoteLines:
    """A command on a node whose output lines arrive while it runs, each with this host's monotonic time
    (a probe loop). Ended by its pid: :meth:`stop` is safe to call more than once."""

    def __init__(self, route: Route, node: str, argv: Sequence[str], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        full = route.argv(node, remote_command(argv))
        try:
            self.proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as err:
            raise _cannot_run(full[0], err) from err
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"labctl-lines-{node}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append((self.clock(), line.rstrip("\n")))

    def since(self, moment: float) -> list[tuple[float, str]]:
        with self._lock:
            return [(at, line) for at, line in self.lines if at >= moment]

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
