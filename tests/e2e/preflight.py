"""The real kubeadm's preflight on a running lab's nodes, with containerd answering a real crictl over CRI.

Run by tests/e2e/test_aptpath.py (issue #18, part 3): the apt-path lab's master1 and worker1 run real
containerd from Debian, installed and configured by labctl's node preparation.

For any lab of tests/e2e (a :class:`~tests.e2e.lab.Lab` whose nodes are ready), from the module that
boots it::

    carry_tools(lab, ["master1", "worker1"])   # kubeadm and crictl (built by tests/kubeadm) to TOOLS_DIR
    cri_status(lab, "master1")                 # crictl info and version through labctl's CRI socket
    master_preflight(lab, "master1")           # kubeadm init phase preflight --config /etc/labctl/kubeadm.yaml
    worker_preflight(lab, "worker1")           # kubeadm join phase preflight, what runs without an API server

The tools go to their own directory; the node's own kubeadm, kubelet and kubectl (stand-ins in the test
images) stay where they are. A check may be ignored only for what the stand-ins did on the node before
(files they wrote, the port their fake API server holds, the kubelet being one) or because the lab is
offline (no registry to pull images from): :func:`standin_ignores` names each with its reason, and only
where the node shows that trace. One warning is expected rather than ignored, and only where labctl's
version table (images/kubernetes.yaml) says so: :func:`runtime_expectations`. Every other warning or error
kubeadm reports fails the check: it is for labctl's node preparation (cloud-init/) to fix.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from labctl.guest.containerd import CGROUP_DRIVER
from labctl.guest.roles import KUBEADM_CONFIG
from labctl.lab.versions import VersionTable, load_versions, pair, shown
from tests.e2e.lab import Lab
from tests.kubeadm.gomodule import parse_release
from tests.kubeadm.tooling import crictl_binary, kubeadm_binary

TOOLS_DIR = "/var/lib/labctl-preflight"  # on disk: /tmp is a small tmpfs on the nodes
KUBEADM = f"{TOOLS_DIR}/kubeadm"
CRICTL = f"{TOOLS_DIR}/crictl"
PREFLIGHT_TIMEOUT = 600  # seconds, on the node (the offline image pulls fail one by one)
KUBELET_SKEW = 3  # kubeadm takes a kubelet down to three minors older than itself (MinimumKubeletVersion)

# What kubeadm reports that the stand-ins caused, by check name (kubeadm's own), with why.
OFFLINE = {"ImagePull": "the lab has no registry: the control-plane images cannot be pulled offline"}
STANDIN_TRACES = {
    "Port-6443": "the stand-in's fake API server (labctl-fake-apiserver.service) holds :6443 since its "
                 "kubeadm init/join",
    "FileAvailable--etc-kubernetes-kubelet.conf": "the stand-in's kubeadm join wrote it",
    "FileAvailable--etc-kubernetes-pki-ca.crt": "the stand-in's kubeadm join wrote the discovered cluster CA "
                                                "there",
    "KubeletVersion": "the kubelet is the stand-in, which reports a version this kubeadm does not take",
}
# What each trace looks like on a node: a shell test, run as root.
TRACE_TESTS = {
    "Port-6443": "systemctl is-active --quiet labctl-fake-apiserver.service",
    "FileAvailable--etc-kubernetes-kubelet.conf": "test -e /etc/kubernetes/kubelet.conf",
    "FileAvailable--etc-kubernetes-pki-ca.crt": "test -e /etc/kubernetes/pki/ca.crt",
    "KubeletVersion": 'readlink -f "$(command -v kubelet)" | grep -q labctl-standin',
}
REPORT = re.compile(r"^\s*\[(WARNING|ERROR) ([^\]]+)\]: (.*)$")
KLOG_CHECK = re.compile(r"checks\.go:\d+\] (.*)$")  # kubeadm's -v=1 line as each check begins


@dataclass(frozen=True)
class Preflight:
    """One run of kubeadm's preflight on a node: what ran, what it said, what was ignored and why."""

    node: str
    argv: list[str]
    exit: int
    output: str
    ignored: dict[str, str]  # check -> why
    configured: list[str]  # the checks labctl's kubeadm configuration ignores (nodeRegistration)
    seconds: float
    expected: dict[str, str] = field(default_factory=dict)  # warnings the version table predicts -> why
    warnings: dict[str, list[str]] = field(default_factory=dict)  # check -> messages
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def validated(self) -> list[str]:
        """What kubeadm says it checked (its -v=1 log lines from checks.go), in order."""
        return [m.group(1) for line in self.output.splitlines() if (m := KLOG_CHECK.search(line))]

    def summary(self) -> dict[str, Any]:
        return {"argv": self.argv, "exit": self.exit, "seconds": self.seconds, "ignored": self.ignored,
                "expected": self.expected, "configured": self.configured, "warnings": self.warnings,
                "errors": self.errors, "validated": self.validated}


def carry_tools(lab: Lab, nodes: Iterable[str]) -> dict[str, float]:
    """The real kubeadm and crictl on each node, in TOOLS_DIR; seconds each node took (0 when they were
    there already). kubeadm is the one tests/kubeadm builds for its default minor."""
    tools = host_tools()
    digests = {target: hashlib.sha256(source.read_bytes()).hexdigest() for target, source in tools.items()}
    took = {}
    for node in nodes:
        began = time.monotonic()
        for target, source in tools.items():
            if _sha256_on(lab, node, target) != digests[target]:
                lab.put(node, source, target, timeout=900)
                assert _sha256_on(lab, node, target) == digests[target], f"{node}: {target} arrived damaged"
        took[node] = round(time.monotonic() - began, 1)
    return took


@cache
def host_tools() -> dict[str, Path]:
    """Where each tool goes on a node -> the host's binary (built, or taken from the cache, once per run)."""
    return {KUBEADM: kubeadm_binary(), CRICTL: crictl_binary()}


@cache
def kubeadm_minor() -> int:
    """The minor of the kubeadm carried to the nodes, as it says itself."""
    done = subprocess.run([str(host_tools()[KUBEADM]), "version", "-o", "short"], capture_output=True, text=True,
                          timeout=60, check=True)
    return parse_release(done.stdout.strip())[1]


def node_registration(lab: Lab, node: str) -> dict[str, Any]:
    """nodeRegistration of the node's kubeadm configuration, as labctl wrote it there."""
    text = lab.ssh_ok(node, "sudo", "cat", KUBEADM_CONFIG)
    [registration] = [doc["nodeRegistration"] for doc in yaml.safe_load_all(text) if doc and "nodeRegistration" in doc]
    return dict(registration)


def cri_status(lab: Lab, node: str) -> dict[str, Any]:
    """``crictl info`` and ``crictl version`` through the CRI socket of labctl's kubeadm configuration."""
    crictl = ["sudo", CRICTL, "--runtime-endpoint", node_registration(lab, node)["criSocket"], "--timeout", "30s"]
    info = json.loads(lab.ssh_ok(node, *crictl, "info", "-o", "json"))
    # `crictl version` has no -o: "RuntimeName:  containerd" lines, as keys of crictl's JSON elsewhere.
    version = {key[0].lower() + key[1:]: value.strip() for line in lab.ssh_ok(node, *crictl, "version").splitlines()
               for key, sep, value in [line.partition(":")] if sep}
    conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    return {"conditions": conditions, "version": version, "config": info.get("config", {})}


def standin_ignores(lab: Lab, node: str, candidates: Iterable[str]) -> dict[str, str]:
    """The checks among ``candidates`` that a stand-in's trace on ``node`` makes fail, with the reason."""
    ignores = {}
    for check in candidates:
        if lab.ssh(node, "sudo", "sh", "-c", TRACE_TESTS[check]).returncode != 0:
            continue
        if check == "KubeletVersion" and _kubelet_in_skew(lab, node):
            continue
        ignores[check] = STANDIN_TRACES[check]
    return ignores


def runtime_expectations(lab: Lab, node: str) -> dict[str, str]:
    """The warnings kubeadm gives on ``node`` because of the runtime Debian ships, not the node's preparation:
    :func:`runtime_expected` of this kubeadm and the node's containerd, as crictl reads it."""
    return runtime_expected(kubeadm_minor(), cri_status(lab, node)["version"]["runtimeVersion"])


def runtime_expected(kubeadm_minor: int, runtime_version: str, table: VersionTable | None = None) -> dict[str, str]:
    """ContainerRuntimeVersion, where labctl's version table lets kubeadm's minor run on this containerd but
    not the next minor.

    kubeadm asks the runtime for its cgroup driver over CRI (RuntimeConfig, KEP-4033, in containerd from
    2.0); containerd 1.x cannot answer, so kubeadm warns that its fallback, the cgroupDriver of the
    kubelet's configuration, "will be removed in 1.36". labctl states that driver (systemd, the one it gives
    containerd's runc: labctl/guest/containerd.py), so the fallback is labctl's choice, not a default. Only
    another containerd ends the warning: Debian 13 ships 1.7 (trixie-backports has none), and the version
    table makes this minor the last on it (`labctl plan` refuses the next on this image)."""
    table = table or load_versions()
    this, after = table.minors.get(f"1.{kubeadm_minor}"), table.minors.get(f"1.{kubeadm_minor + 1}")
    runtime = pair(".".join(runtime_version.removeprefix("v").split(".")[:2]))  # "1.7.24~ds1", "v2.1.0"
    if this is None or after is None or not this.containerd <= runtime < after.containerd:
        return {}
    return {"ContainerRuntimeVersion": f"containerd {runtime_version} has no CRI RuntimeConfig (containerd 2.0 "
            f"added it); kubeadm {this.name} falls back to the kubelet's configured cgroupDriver (labctl's "
            f"KubeletConfiguration: {CGROUP_DRIVER}) and warns that {after.name} will not; images/kubernetes.yaml "
            f"makes {this.name} the last minor on containerd {shown(runtime)}"}


def master_preflight(lab: Lab, node: str = "master1") -> Preflight:
    """``kubeadm init phase preflight --config /etc/labctl/kubeadm.yaml`` on the node, in its own network
    (the port checks are real), image pulls included (they fail offline: ignored, with the reason)."""
    ignores = {**standin_ignores(lab, node, ["Port-6443", "KubeletVersion"]), **OFFLINE}
    argv = [KUBEADM, "init", "phase", "preflight", "--config", KUBEADM_CONFIG]
    return _preflight(lab, node, argv, ignores, runtime_expectations(lab, node))


def worker_preflight(lab: Lab, node: str = "worker1") -> Preflight:
    """What ``kubeadm join`` checks on a worker before it needs the API server.

    ``kubeadm join phase preflight`` runs its node checks first (root; kubelet.conf, bootstrap-kubelet.conf
    and the CA file absent; the container runtime over CRI and its version; swap; losetup, mount and cp on
    the PATH; the kernel and cgroups (SystemVerification); the hostname; the kubelet's version, service and
    port 10250; no proxy for the API endpoint; IPv4 forwarding), then discovers the cluster, which a real
    API server would answer. With ``--dry-run`` and no network (an empty network namespace, so the real
    endpoint cannot answer) kubeadm's own dry-run cluster-info answers instead and the phase ends there;
    without them, discovery would retry until its timeout (5 minutes by default)."""
    ignores = standin_ignores(lab, node, ["FileAvailable--etc-kubernetes-kubelet.conf",
                                          "FileAvailable--etc-kubernetes-pki-ca.crt", "KubeletVersion"])
    argv = ["unshare", "--net", KUBEADM, "join", "phase", "preflight", "--config", KUBEADM_CONFIG, "--dry-run"]
    return _preflight(lab, node, argv, ignores, runtime_expectations(lab, node))


def problems(preflight: Preflight) -> list[str]:
    """What is wrong with a run: a failure, an error, a warning from a check neither the test nor labctl's
    configuration ignores and the version table does not predict, or an ignore or a prediction that did not
    fire."""
    found = [f"exit {preflight.exit}"] if preflight.exit != 0 else []
    found += [f"ERROR {check}: {m}" for check, messages in preflight.errors.items() for m in messages]
    allowed = set(preflight.ignored) | set(preflight.configured) | set(preflight.expected)
    found += [f"WARNING {check}: {m}" for check, messages in preflight.warnings.items() if check not in allowed
              for m in messages]
    found += [f"ignored {check} did not fire ({why}): drop it" for check, why in preflight.ignored.items()
              if check not in preflight.warnings]
    found += [f"expected {check} did not come ({why})" for check, why in preflight.expected.items()
              if check not in preflight.warnings]
    return found


def _preflight(lab: Lab, node: str, argv: list[str], ignores: dict[str, str],
               expected: dict[str, str]) -> Preflight:
    command = [*argv, "-v=1"]
    if ignores:
        command.append(f"--ignore-preflight-errors={','.join(sorted(ignores))}")
    began = time.monotonic()
    done = lab.ssh(node, "sudo", "timeout", str(PREFLIGHT_TIMEOUT), *command, timeout=PREFLIGHT_TIMEOUT + 60)
    seconds = round(time.monotonic() - began, 1)
    output = done.stdout + done.stderr
    reports = parse_reports(output)
    print(f"[preflight {node}] {shlex.join(command)}: exit {done.returncode} in {seconds} s", flush=True)
    print("\n".join(f"[preflight {node}] {line}" for line in output.splitlines()), flush=True)
    configured = list(node_registration(lab, node).get("ignorePreflightErrors") or [])
    return Preflight(node, command, done.returncode, output, ignores, configured, seconds, expected,
                     reports["WARNING"], reports["ERROR"])


def parse_reports(output: str) -> dict[str, dict[str, list[str]]]:
    """kubeadm's ``[WARNING Check]: message`` and ``[ERROR Check]: message`` lines: level -> check -> messages."""
    reports: dict[str, dict[str, list[str]]] = {"WARNING": {}, "ERROR": {}}
    for line in output.splitlines():
        if match := REPORT.match(line):
            level, check, message = match.groups()
            reports[level].setdefault(check, []).append(message)
    return reports


def _sha256_on(lab: Lab, node: str, path: str) -> str | None:
    done = lab.ssh(node, "sudo", "sha256sum", path)
    return done.stdout.split()[0] if done.returncode == 0 and done.stdout else None


def _kubelet_in_skew(lab: Lab, node: str) -> bool:
    """Whether the node's kubelet reports a version the real kubeadm takes (no newer than kubeadm's
    minor, at most KUBELET_SKEW minors older)."""
    reported = lab.ssh_ok(node, "sudo", "kubelet", "--version").split()[-1]  # "Kubernetes v1.31.0"
    _, kubelet_minor, _ = parse_release(reported)
    return kubeadm_minor() - KUBELET_SKEW <= kubelet_minor <= kubeadm_minor()
