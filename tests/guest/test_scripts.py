"""The node scripts: shellcheck-clean, and their phase reporting, bounded waits and the kubeadm, kubectl
and curl calls run for real under /bin/sh with stand-in commands, in a temp dir (no traffic)."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labctl.guest.cloudconfig import ROLE_SCRIPTS
from labctl.guest.roles import render_lab_env
from labctl.lab.config import load_lab
from labctl.lab.plan import plan_lab
from labctl.resources import data_file, read_text

ENTRY_POINTS = ("bootstrap", "announce", "refresh")  # executables; the rest are sourced
SCRIPTS = (*ENTRY_POINTS, "lib.sh", "gateway.sh", "lb.sh", "etcd.sh", "k8s-node.sh", "master.sh", "worker.sh")
STUB = """#!/bin/sh
{{ for arg in "$@"; do printf '%s\\n' "$arg"; done; echo @@; }} >>"$STUB_LOG/{name}"
{body}
"""
MANIFEST = """kind: ConfigMap
data:
  net-conf.json: |
    {
      "Network": "10.244.0.0/16",
      "Backend": {"Type": "vxlan"}
    }
"""


class Sandbox:
    """A node's scripts and env file in a temp dir, with stand-in commands first on the PATH."""

    def __init__(self, root: Path, node: str = "master1") -> None:
        self.root = root
        self.lib = root / "lib"
        self.bin = root / "bin"
        self.log = root / "calls"
        self.state = root / "state"
        self.console = root / "console"
        for path in (self.lib, self.bin, self.log):
            path.mkdir()
        for name in SCRIPTS:
            (self.lib / name).write_text(read_text("cloud-init", f"scripts/{name}"))
        (self.lib / "bootstrap").chmod(0o755)
        self.console.write_text("")
        plan = plan_lab(load_lab())
        self.env = root / "lab.env"
        # The real env file of the node, then the test's overrides (later assignments win).
        self.env.write_text(render_lab_env(plan, plan.node(node)))
        self.run_dir = root / "run"
        self.set(LABCTL_STATE_DIR=self.state, LABCTL_RUN_DIR=self.run_dir, LABCTL_CONSOLE=self.console)

    def set(self, **values: object) -> None:
        with self.env.open("a") as env:
            env.writelines(f"{key}={value}\n" for key, value in values.items())

    def stub(self, name: str, body: str = "exit 0") -> None:
        path = self.bin / name
        path.write_text(STUB.format(name=name, body=body))
        path.chmod(0o755)

    def calls(self, name: str) -> list[list[str]]:
        path = self.log / name
        if not path.exists():
            return []
        text = path.read_text()
        return [call.strip("\n").split("\n") if call.strip("\n") else [] for call in text.split("@@\n")[:-1]]

    def sh(self, code: str, *sources: str) -> subprocess.CompletedProcess:
        """Run ``code`` in /bin/sh after sourcing the env file, lib.sh and ``sources``."""
        prelude = ". \"$1\"; . \"$2/lib.sh\"; " + "".join(f'. "$2/{name}"; ' for name in sources)
        return subprocess.run(["sh", "-c", "set -eu; " + prelude + code, "sh", str(self.env), str(self.lib)],
                              capture_output=True, text=True, timeout=60, env=self.environ())

    def bootstrap(self, role: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.lib / "bootstrap"), role, str(self.env)],
                              capture_output=True, text=True, timeout=60, env=self.environ())

    def environ(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}", "STUB_LOG": str(self.log),
                "LC_ALL": "C"}

    def console_lines(self) -> list[str]:
        return self.console.read_text().splitlines()

    def phase(self) -> str:
        """The recorded phase; this boot's copy in the run dir always says the same."""
        recorded = (self.state / "phase").read_text()
        assert (self.run_dir / "phase").read_text() == recorded
        return recorded


@pytest.fixture
def box(tmp_path):
    return Sandbox(tmp_path)


# --- static checks ----------------------------------------------------------------------------


def test_every_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed on this host (make test-deps installs it)")
    directory = Path(str(data_file("cloud-init", "scripts")))
    scripts = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    assert sorted(p.name for p in scripts) == sorted(SCRIPTS)
    # cwd = the scripts' directory, so its .shellcheckrc (follow what bootstrap sources) applies.
    result = subprocess.run([shellcheck, *(p.name for p in scripts)], cwd=directory,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_strict_and_shipped():
    for entry in ENTRY_POINTS:
        assert read_text("cloud-init", f"scripts/{entry}").startswith("#!/bin/sh\n")
        assert "\nset -eu\n" in read_text("cloud-init", f"scripts/{entry}")
    for name in SCRIPTS[len(ENTRY_POINTS):]:
        assert read_text("cloud-init", f"scripts/{name}").startswith("# shellcheck shell=sh\n")
    shipped = {name for names in ROLE_SCRIPTS.values() for name in names}
    assert shipped | {*ENTRY_POINTS, "lib.sh"} == set(SCRIPTS)


# --- lib.sh -----------------------------------------------------------------------------------


def test_phase_goes_to_state_file_console_and_stdout(box):
    result = box.sh("phase kernel; phase packages")
    assert result.returncode == 0, result.stderr
    assert box.phase() == "packages\n"
    assert box.console_lines() == ["labctl-phase: master1 kernel", "labctl-phase: master1 packages"]
    assert result.stdout.splitlines() == box.console_lines()


def test_fail_reports_the_step_and_stops(box):
    result = box.sh('phase cni; fail cni "digest mismatch"; echo still running')
    assert result.returncode == 1
    assert "still running" not in result.stdout
    assert box.phase() == "failed cni\n"
    assert box.console_lines()[-1] == "labctl-phase: master1 failed cni"
    assert "labctl-error: master1 cni: digest mismatch" in box.console_lines()
    assert "cni failed: digest mismatch" in result.stderr


def test_must_names_the_failed_command(box):
    result = box.sh("must kernel false")
    assert result.returncode == 1
    assert box.phase() == "failed kernel\n"
    assert "'false' exited 1" in result.stderr


def test_an_unexpected_error_still_fails_the_phase(box):
    # bootstrap installs on_exit as its EXIT trap: `set -e` stopping the script is a failed phase too.
    result = box.sh("trap on_exit EXIT; phase containerd; false; echo still running")
    assert result.returncode == 1 and "still running" not in result.stdout
    assert box.phase() == "failed containerd\n"
    assert box.console_lines()[-1] == "labctl-phase: master1 failed containerd"
    assert box.console_lines().count("labctl-phase: master1 failed containerd") == 1


def test_fail_under_the_exit_trap_reports_once(box):
    result = box.sh('trap on_exit EXIT; phase cni; fail cni "bad digest"')
    assert result.returncode == 1
    assert [line for line in box.console_lines() if "failed" in line] == ["labctl-phase: master1 failed cni"]


def test_a_missing_console_does_not_stop_the_boot(box, tmp_path):
    box.set(LABCTL_CONSOLE=tmp_path / "no-such-dir" / "ttyS0")
    result = box.sh("phase network")
    assert result.returncode == 0, result.stderr
    assert box.phase() == "network\n" and not (tmp_path / "no-such-dir").exists()


def test_wait_for_is_bounded(box):
    box.stub("probe", "exit 1")
    result = box.sh("if wait_for 4 0 probe; then echo up; else echo gave-up; fi")
    assert result.stdout.strip() == "gave-up"
    assert len(box.calls("probe")) == 4
    box.stub("second", 'n=$(grep -c @@ "$STUB_LOG/second"); [ "$n" -ge 2 ]')
    result = box.sh("wait_for 10 0 second && echo up")
    assert result.stdout.strip() == "up" and len(box.calls("second")) == 2


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_refuses_an_unknown_or_mismatched_role(box):
    result = box.bootstrap("etcd")
    assert result.returncode == 1
    assert box.console_lines() == ["labctl-phase: master1 start", "labctl-error: master1 start: role etcd given, "
                                   "but " + str(box.env) + " is for a master", "labctl-phase: master1 failed start"]
    assert box.phase() == "failed start\n"


def test_bootstrap_of_a_ready_node_does_nothing(box):
    box.state.mkdir()
    (box.state / "phase").write_text("ready\n")
    result = box.bootstrap("master")
    assert result.returncode == 0, result.stderr
    assert box.console_lines() == ["labctl-phase: master1 ready"]


# --- the calls the end-to-end stand-ins must match --------------------------------------------


def cni_box(box: Sandbox, digest: str, pod_cidr: str = "10.244.0.0/16") -> Path:
    fixture = box.root / "served-manifest.yaml"
    fixture.write_text(MANIFEST)
    box.stub("curl", f'while [ $# -gt 0 ]; do [ "$1" = -o ] && cp "{fixture}" "$2"; shift; done')
    box.stub("kubectl")
    box.set(CNI_URL="http://203.0.113.9/cni.yaml", CNI_SHA256=digest, POD_CIDR=pod_cidr)
    return fixture


def test_cni_is_verified_adapted_and_applied(box):
    digest = hashlib.sha256(MANIFEST.encode()).hexdigest()
    cni_box(box, digest, pod_cidr="10.32.0.0/16")
    result = box.sh("master_cni", "k8s-node.sh", "master.sh")
    assert result.returncode == 0, result.stderr
    (download,) = box.calls("curl")
    assert download[-3:] == ["-o", f"{box.state}/cni.yaml.download", "http://203.0.113.9/cni.yaml"]
    assert download[:4] == ["--fail", "--silent", "--show-error", "--location"]
    applied = box.state / "cni.yaml"
    assert box.calls("kubectl") == [["--kubeconfig", "/etc/kubernetes/admin.conf", "apply", "-f", str(applied)]]
    assert '"Network": "10.32.0.0/16"' in applied.read_text()
    assert applied.read_text() == MANIFEST.replace("10.244.0.0/16", "10.32.0.0/16")


def test_cni_with_a_wrong_digest_is_never_applied(box):
    cni_box(box, "0" * 64)
    result = box.sh("phase cni; master_cni", "k8s-node.sh", "master.sh")
    assert result.returncode == 1
    assert box.calls("kubectl") == []
    assert box.console_lines()[-1] == "labctl-phase: master1 failed cni"


def test_joining_master_waits_for_the_previous_one_with_curl_and_the_ca(tmp_path):
    box = Sandbox(tmp_path, "master2")
    box.stub("curl", "exit 7")
    box.set(API_WAIT_TRIES=3, API_WAIT_DELAY=0)
    result = box.sh('phase wait-previous; wait_for_apiserver wait-previous "$PREVIOUS_MASTER_ADDRESS" "master1"',
                    "k8s-node.sh")
    assert result.returncode == 1
    plan = plan_lab(load_lab())
    url = f"https://{plan.node('master1').internal.address.ip}:6443/readyz"
    argv = ["--fail", "--silent", "--show-error", "--max-time", "10", "--cacert", "/etc/kubernetes/pki/ca.crt", url]
    assert box.calls("curl") == [argv] * 3
    assert box.console_lines()[-1] == "labctl-phase: master2 failed wait-previous"
    assert "did not answer /readyz in 3 tries" in result.stderr


def test_worker_waits_for_the_api_endpoint(tmp_path):
    box = Sandbox(tmp_path, "worker1")
    box.stub("curl")
    result = box.sh('wait_for_apiserver wait-api "$API_NAME" "the API endpoint"', "k8s-node.sh")
    assert result.returncode == 0, result.stderr
    assert box.calls("curl") == [["--fail", "--silent", "--show-error", "--max-time", "10", "--cacert",
                                  "/etc/labctl/kubernetes-ca.crt", "https://api.k8s.internal:6443/readyz"]]


@pytest.mark.skipif(Path("/etc/kubernetes/kubelet.conf").exists(), reason="this host is a Kubernetes node")
@pytest.mark.parametrize("subcommand", ["init", "join"])
def test_kubeadm_is_called_with_the_config_file(box, subcommand):
    box.stub("kubeadm")
    result = box.sh(f"kubeadm_run kubeadm-{subcommand} {subcommand}", "k8s-node.sh")
    assert result.returncode == 0, result.stderr
    assert box.calls("kubeadm") == [[subcommand, "--config", "/etc/labctl/kubeadm.yaml"]]


def test_a_failed_kubeadm_fails_its_phase(box):
    box.stub("kubeadm", "exit 1")
    if Path("/etc/kubernetes/kubelet.conf").exists():
        pytest.skip("this host is a Kubernetes node")
    result = box.sh("phase kubeadm-init; kubeadm_run kubeadm-init init", "k8s-node.sh")
    assert result.returncode == 1
    assert box.console_lines()[-1] == "labctl-phase: master1 failed kubeadm-init"


def test_announce_repeats_the_recorded_phase_on_the_console(tmp_path):
    """labctl-phase.service runs `announce` at every boot: it reports the phase, runs no step."""
    scripts = Path(str(data_file("cloud-init", "scripts")))
    state, run, console = tmp_path / "state", tmp_path / "run", tmp_path / "console"
    state.mkdir()
    console.write_text("")
    env = tmp_path / "lab.env"
    env.write_text(f"NODE=master2\nLABCTL_STATE_DIR={state}\nLABCTL_RUN_DIR={run}\nLABCTL_CONSOLE={console}\n")
    quiet = subprocess.run(["sh", str(scripts / "announce"), str(env)], capture_output=True, text=True, timeout=30)
    assert quiet.returncode == 0 and console.read_text() == "", "nothing recorded, nothing announced"
    assert not (run / "phase").exists()
    (state / "phase").write_text("ready\n")
    done = subprocess.run(["sh", str(scripts / "announce"), str(env)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert console.read_text() == "labctl-phase: master2 ready\n"
    assert done.stdout == "labctl-phase: master2 ready\n"
    assert (run / "phase").read_text() == "ready\n"  # this boot's phase, what the host reads over ssh
