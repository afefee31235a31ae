"""One budget table: every node-side wait, kubeadm's timeouts and the host's readiness timeout.

Each accelerator has one row of step budgets (seconds). From it and the lab's shape come, per node,
the longest its bootstrap may legitimately take (its *deadline*, counted from the bootstrap's start)
and how long each of its waits on another node lasts; the host's default timeout is the worst
node's deadline plus its boot. So a node that waits on another gives up, with its own one-line
message, only after the other one would have finished or failed; and the host gives up only after
every node would have said something of its own.

Dependencies (who waits on whom): every node on the gateway's DNS; master1 on the load balancers;
master N on master N-1's API; workers on the API through the load balancers (master1 behind them).
A wait lasts until the other node's deadline, plus the boot skew (nodes start their bootstraps up
to ``boot`` seconds apart).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from labctl.lab.accel import KVM, TCG

HOST_MARGIN = 120  # seconds the host waits beyond the worst node's deadline (reading, reporting)
KUBEADM_API_CALLS = 4  # kubernetesAPICall budgets one kubeadm command may spend in a row


@dataclass(frozen=True)
class KubeadmTimeouts:
    """kubeadm's v1beta4 ``timeouts`` (seconds); its defaults are the KVM row."""

    control_plane: int  # controlPlaneComponentHealthCheck
    kubelet: int  # kubeletHealthCheck
    discovery: int
    tls_bootstrap: int
    api_call: int  # kubernetesAPICall

    def v1beta4(self) -> dict[str, str]:
        """The ``timeouts`` section of an Init/JoinConfiguration (Go durations)."""
        return {"controlPlaneComponentHealthCheck": duration(self.control_plane),
                "kubeletHealthCheck": duration(self.kubelet), "discovery": duration(self.discovery),
                "tlsBootstrap": duration(self.tls_bootstrap), "kubernetesAPICall": duration(self.api_call)}

    @property
    def command(self) -> int:
        """The longest one ``kubeadm init`` or ``join`` may run: every wait it can make, in a row."""
        return (self.discovery + self.tls_bootstrap + self.kubelet + self.control_plane
                + KUBEADM_API_CALLS * self.api_call)


@dataclass(frozen=True)
class Budget:
    """Step budgets under one accelerator (seconds)."""

    accel: str
    boot: int  # power-on to the bootstrap's start (firmware, kernel, cloud-init's first stages)
    apt_lock: int  # waiting for dpkg's lock (unattended-upgrades runs at first boot)
    apt: int  # one package step: apt-get update and install, the lock wait included
    step: int  # a local step: sysctl, a configuration checked and a daemon (re)started
    cni: int  # applying the CNI manifest (kubectl apply, retried)
    kubeadm: KubeadmTimeouts


BUDGETS: Mapping[str, Budget] = {
    KVM: Budget(KVM, boot=180, apt_lock=300, apt=600, step=60, cni=300,
                kubeadm=KubeadmTimeouts(control_plane=240, kubelet=240, discovery=300, tls_bootstrap=300,
                                        api_call=60)),
    # Software emulation: several times slower for everything that computes (dpkg, TLS, Go binaries).
    TCG: Budget(TCG, boot=600, apt_lock=600, apt=1200, step=240, cni=600,
                kubeadm=KubeadmTimeouts(control_plane=600, kubelet=600, discovery=600, tls_bootstrap=600,
                                        api_call=120)),
}


def budget_for(accel: str | None) -> Budget:
    """The row of ``accel``; an accelerator not resolved yet (``auto`` before `up`) gets TCG's, the
    longer one, so a wait derived from it is never too short."""
    return BUDGETS[accel or TCG]


def duration(seconds: int) -> str:
    """A Go duration as kubeadm writes them: 4m0s, 1h0m0s."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


@dataclass(frozen=True)
class NodeBudget:
    """What one node may spend: its waits on other nodes and its deadline (seconds after its
    bootstrap started by which it is ready or has failed with its own message)."""

    deadline: int
    waits: Mapping[str, int]  # "dns", "lb", "previous", "api" -> seconds


@dataclass(frozen=True)
class LabBudget:
    budget: Budget
    nodes: Mapping[str, NodeBudget]

    @property
    def host_timeout(self) -> int:
        """How long `up` and `start` wait by default: the last node's boot and deadline, and a margin."""
        return self.budget.boot + max(node.deadline for node in self.nodes.values()) + HOST_MARGIN


def lab_budget(budget: Budget, nodes: list[tuple[str, str, int]], lb_count: int) -> LabBudget:
    """Every node's waits and deadline, from the row and the nodes ((name, role, index), boot order)."""
    b = budget
    skew = b.boot  # two nodes' bootstraps start at most one boot budget apart
    out: dict[str, NodeBudget] = {}
    gateway = 3 * b.step + b.apt  # packages, forwarding, firewall, dns
    out["gateway"] = NodeBudget(gateway, {})
    dns = gateway + skew
    lb_deadline = dns + b.apt + b.step * (2 if lb_count > 1 else 1)
    prepare = dns + 2 * b.step + b.apt  # network, kernel, packages, containerd
    # An external etcd member: packages, configuration, then healthy once a majority is up (a skew later).
    etcd_deadline = dns + b.apt + 2 * b.step + skew
    external = any(role == "etcd" for _, role, _ in nodes)
    master_prepare = prepare + b.apt  # and etcdctl (Debian's etcd-client) on every master
    previous = 0
    for name, role, index in nodes:
        if role == "lb":
            out[name] = NodeBudget(lb_deadline, {"dns": dns})
        elif role == "etcd":
            out[name] = NodeBudget(etcd_deadline, {"dns": dns})
        elif role == "master" and index == 1:
            lb_wait = max(lb_deadline, etcd_deadline if external else 0) + skew
            previous = max(master_prepare, lb_wait) + b.kubeadm.command + b.cni + b.step
            out[name] = NodeBudget(previous, {"dns": dns, "lb": lb_wait})
        elif role == "master":
            wait = previous + skew
            previous = max(master_prepare, wait) + b.kubeadm.command + b.step
            out[name] = NodeBudget(previous, {"dns": dns, "previous": wait})
    master1 = out.get("master1")
    for name, role, _ in nodes:
        if role == "worker":
            api = (master1.deadline if master1 else 0) + skew
            out[name] = NodeBudget(max(prepare, api) + b.kubeadm.command, {"dns": dns, "api": api})
    return LabBudget(budget, out)
