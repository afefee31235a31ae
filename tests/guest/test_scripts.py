"""The node scripts: shellcheck-clean, and their phase reporting, bounded waits and the kubeadm, kubectl
and curl calls run for real under /bin/sh with stand-in commands, in a temp dir (no traffic)."""

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labctl.guest.cloudconfig import ROLE_SCRIPTS
from labctl.guest.roles import render_lab_env
from labctl.lab.config import load_lab
from labctl.lab.plan import plan_lab
from labctl.resources import data_file, read_text
from tests.guest.manifests import FLANNEL, with_cni

ENTRY_POINTS = ("bootstrap", "retry", "refresh")  # executables; the rest are sourced
SCRIPTS = (*ENTRY_POINTS, "lib.sh", "gateway.sh", "lb.sh", "etcd.sh", "k8s-node.sh", "master.sh", "worker.sh")
STUB = """#!/bin/sh
{{ for arg in "$@"; do printf '%s\\n' "$arg"; done; echo @@; }} >>"$STUB_LOG/{name}"
{body}
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
        plan = with_cni(plan_lab(load_lab()))
        self.env = root / "lab.env"
        # The real env file of the node, then the test's overrides (later assignments win).
        self.env.write_text(render_lab_env(plan, plan.node(node)))
        self.run_dir = root / "run"
        self.set(LABCTL_STATE_DIR=self.state, LABCTL_RUN_DIR=self.run_dir, LABCTL_CONSOLE=self.console,
                 WAIT_DELAY=0, POLICY_RC=root / "policy-rc.d", APT_ETC=root / "apt",
                 OS_RELEASE=root / "os-release")
        self.stub("systemctl")

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
    assert box.calls("systemctl")[0] == ["start", "labctl-beacon.service"]
    assert box.phase() == "failed start\n"


def test_bootstrap_of_a_ready_node_does_nothing(box):
    box.state.mkdir()
    (box.state / "phase").write_text("ready\n")
    result = box.bootstrap("master")
    assert result.returncode == 0, result.stderr
    assert box.console_lines() == ["labctl-phase: master1 ready"]




def test_a_failed_node_says_so_again_at_every_boot_and_runs_no_step(box):
    box.state.mkdir()
    (box.state / "phase").write_text("failed packages\n")
    (box.state / "error").write_text("apt-get install haproxy failed 3 times\n")
    result = box.bootstrap("master")
    assert result.returncode == 1
    assert box.console_lines() == ["labctl-error: master1 packages: apt-get install haproxy failed 3 times",
                                   "labctl-phase: master1 failed packages"]
    assert box.phase() == "failed packages\n"  # this boot's copy says it too (the host may read it over ssh)
    assert box.calls("systemctl") == [["start", "labctl-beacon.service"]]  # the others learn it


def test_bootstrap_resumes_at_the_first_unfinished_step(tmp_path):
    box = Sandbox(tmp_path, "gateway")
    (box.state / "done").mkdir(parents=True)
    for step in ("packages", "forwarding"):
        (box.state / "done" / step).touch()
    box.stub("nft")
    box.stub("dnsmasq")
    box.stub("install")
    result = box.bootstrap("gateway")
    assert result.returncode == 0, result.stderr
    assert box.console_lines() == [f"labctl-phase: gateway {p}" for p in ("start", "firewall", "dns", "ready")]
    assert sorted(p.name for p in (box.state / "done").iterdir()) == ["dns", "firewall", "forwarding", "packages"]
    assert ["restart", "dnsmasq.service"] in box.calls("systemctl")
    assert box.calls("systemctl")[-1] == ["stop", "labctl-beacon.service"]


def test_a_step_cut_short_by_a_shutdown_is_not_a_failure(box):
    box.run_dir.mkdir()
    (box.run_dir / "stopping").mkdir()  # the unit's ExecStop, before systemd kills the step
    result = box.sh("trap on_exit EXIT; phase packages; false")
    assert result.returncode == 1
    assert box.phase() == "packages\n" and not (box.state / "error").exists()
    assert "interrupted by a shutdown; the next boot resumes it" in result.stdout
    assert not any("failed" in line for line in box.console_lines())


def test_retry_clears_a_failure_and_restarts_the_bootstrap(box):
    box.state.mkdir()
    (box.state / "phase").write_text("failed kubeadm-join\n")
    (box.state / "error").write_text("kubeadm join exited 1\n")
    (box.state / "kubeadm.attempts").write_text("2\n")
    retry = subprocess.run(["sh", str(box.lib / "retry"), str(box.env)], capture_output=True, text=True, timeout=30,
                           env=box.environ())
    assert retry.returncode == 0, retry.stderr
    assert retry.stdout.splitlines() == ["labctl-phase: master1 start", "labctl: master1: retrying from kubeadm-join"]
    assert box.phase() == "start\n" and not (box.state / "error").exists()
    assert not (box.state / "kubeadm.attempts").exists()
    assert box.calls("systemctl") == [["restart", "--no-block", "labctl-bootstrap.service"]]
    again = subprocess.run(["sh", str(box.lib / "retry"), str(box.env)], capture_output=True, text=True, timeout=30,
                           env=box.environ())
    assert again.stdout == "labctl: master1: not failed (start)\n" and len(box.calls("systemctl")) == 1


# --- waits on other nodes ---------------------------------------------------------------------


@contextlib.contextmanager
def beacon(directory: Path, phase: str):
    """A node's phase beacon on 127.0.0.1 (what labctl-beacon.service serves), for the length of a test."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "phase").write_text(phase + "\n")
    handler = partial(SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_wait_stops_at_once_when_the_node_it_waits_for_failed(box, tmp_path):
    box.stub("getent", "exit 2")
    with beacon(tmp_path / "gateway", "failed packages") as port:
        box.set(BEACON_PORT=port, DNS_DEPENDS="gateway@127.0.0.1", DNS_WAIT=600)
        result = box.sh("wait_for_lab_dns")
    assert result.returncode == 1
    assert box.phase() == "failed network\n"
    assert ("labctl-error: master1 network: api.k8s.internal does not resolve via the gateway "
            "10.213.51.1: waiting for node gateway, which failed at packages") in box.console_lines()
    assert len(box.calls("getent")) == 1


def test_a_wait_on_a_live_node_is_bounded_by_the_budget_and_names_it(box, tmp_path):
    box.stub("curl", "exit 7")
    with beacon(tmp_path / "master1", "kubeadm-init") as port:
        box.set(BEACON_PORT=port, API_DEPENDS="master1@127.0.0.1,lb1@127.0.0.1", API_WAIT=1, WAIT_DELAY=1)
        result = box.sh("worker_wait_api", "k8s-node.sh", "worker.sh")
    assert result.returncode == 1
    error = next(line for line in box.console_lines() if line.startswith("labctl-error:"))
    assert error.startswith("labctl-error: master1 wait-api: the API endpoint (api.k8s.internal:6443) did not "
                            "answer /readyz after 1 s (waiting for master1, lb1)")


def test_worker_waits_for_the_api_endpoint_with_curl_and_the_ca_copy(tmp_path):
    box = Sandbox(tmp_path, "worker1")
    box.stub("curl")
    result = box.sh("worker_wait_api", "k8s-node.sh", "worker.sh")
    assert result.returncode == 0, result.stderr
    assert box.calls("curl") == [["--fail", "--silent", "--show-error", "--max-time", "10", "--cacert",
                                  "/etc/labctl/kubernetes-ca.crt", "https://api.k8s.internal:6443/readyz"]]


def test_joining_master_waits_for_the_previous_one(tmp_path):
    box = Sandbox(tmp_path, "master2")
    box.stub("curl", "exit 7")
    box.set(PREVIOUS_WAIT=0, PREVIOUS_DEPENDS="")
    result = box.sh("phase wait-previous; master_wait_previous", "k8s-node.sh", "master.sh")
    assert result.returncode == 1
    plan = plan_lab(load_lab())
    url = f"https://{plan.node('master1').internal.address.ip}:6443/readyz"
    assert box.calls("curl") == [["--fail", "--silent", "--show-error", "--max-time", "10", "--cacert",
                                  "/etc/labctl/pki/ca.crt", url]]
    assert box.console_lines()[-1] == "labctl-phase: master2 failed wait-previous"


# --- the CNI manifest -------------------------------------------------------------------------


def test_the_seeds_cni_manifest_is_checked_and_applied(box):
    manifest = box.root / "cni.yaml"
    manifest.write_text(FLANNEL)
    box.stub("kubectl")
    box.set(CNI_MANIFEST=manifest, CNI_SHA256=hashlib.sha256(FLANNEL.encode()).hexdigest())
    result = box.sh("master_cni", "k8s-node.sh", "master.sh")
    assert result.returncode == 0, result.stderr
    assert box.calls("kubectl") == [["--kubeconfig", "/etc/kubernetes/admin.conf", "apply", "-f", str(manifest)]]


def test_a_cni_manifest_that_changed_on_the_way_is_never_applied(box):
    manifest = box.root / "cni.yaml"
    manifest.write_text(FLANNEL + "# changed\n")
    box.stub("kubectl")
    box.set(CNI_MANIFEST=manifest, CNI_SHA256=hashlib.sha256(FLANNEL.encode()).hexdigest())
    result = box.sh("phase cni; master_cni", "k8s-node.sh", "master.sh")
    assert result.returncode == 1 and box.calls("kubectl") == []
    assert box.console_lines()[-1] == "labctl-phase: master1 failed cni"


# --- kubeadm ----------------------------------------------------------------------------------

KUBEADM_HOST = Path("/etc/kubernetes/kubelet.conf").exists() or Path("/etc/kubernetes/manifests").exists()


@pytest.mark.skipif(KUBEADM_HOST, reason="this host is a Kubernetes node")
@pytest.mark.parametrize("subcommand", ["init", "join"])
def test_kubeadm_is_called_with_the_config_file_and_a_marker_records_success(box, subcommand):
    box.stub("kubeadm")
    box.stub("timeout", 'shift; exec "$@"')
    result = box.sh(f"kubeadm_run kubeadm-{subcommand} {subcommand}; kubeadm_run kubeadm-{subcommand} {subcommand}",
                    "k8s-node.sh")
    assert result.returncode == 0, result.stderr
    assert box.calls("kubeadm") == [[subcommand, "--config", "/etc/labctl/kubeadm.yaml"]]  # once: the marker
    assert (box.state / "kubeadm.done").exists()
    assert f"kubeadm {subcommand} completed on an earlier boot" in result.stdout


@pytest.mark.skipif(KUBEADM_HOST, reason="this host is a Kubernetes node")
def test_a_failed_kubeadm_resets_and_retries_once_at_the_next_boot_then_stays_failed(box):
    box.stub("kubeadm", '[ "$1" = reset ] && exit 0; echo "[preflight] running"; '
                        'echo "error execution phase kubelet-start: the join timed out" >&2; exit 1')
    box.stub("timeout", 'shift; exec "$@"')
    first = box.sh("phase kubeadm-join; kubeadm_run kubeadm-join join", "k8s-node.sh")
    assert first.returncode == 1
    assert box.calls("kubeadm") == [["join", "--config", "/etc/labctl/kubeadm.yaml"]]
    assert ("labctl-error: master1 kubeadm-join: kubeadm join exited 1 (attempt 1 of 2; the next boot resets and "
            "retries): error execution phase kubelet-start: the join timed out") in box.console_lines()
    due = box.sh('kubeadm_retry_due kubeadm-join && echo due')
    assert due.stdout.strip() == "due"
    second = box.sh("phase kubeadm-join; kubeadm_run kubeadm-join join", "k8s-node.sh")
    assert second.returncode == 1
    assert [call[0] for call in box.calls("kubeadm")] == ["join", "reset", "join"]
    assert box.calls("kubeadm")[1] == ["reset", "-f", "--cri-socket", "unix:///var/run/containerd/containerd.sock"]
    assert box.console_lines()[-2].startswith("labctl-error: master1 kubeadm-join: kubeadm join exited 1 "
                                              "(attempt 2 of 2): error execution phase")
    assert box.sh('kubeadm_retry_due kubeadm-join || echo not-due').stdout.strip() == "not-due"
    assert not (box.state / "kubeadm.done").exists()


# --- packages ---------------------------------------------------------------------------------

APT_404 = """\
Hit:1 http://10.0.0.1:3142/debian trixie InRelease
Err:2 http://10.0.0.1:3142/debian trixie-updates Release
  404  Not Found [IP: 10.0.0.1 3142]
E: The repository 'http://10.0.0.1:3142/debian trixie-updates Release' does not have a Release file.
N: Updating from such a repository can't be done securely, and is therefore disabled by default.
"""


def test_a_mirror_without_a_suite_is_one_line_at_once(box):
    box.stub("apt-get", f"cat <<'EOF'\n{APT_404}EOF\nexit 100")
    box.stub("sleep")
    result = box.sh("phase packages; apt_update packages")
    assert result.returncode == 1
    assert len(box.calls("apt-get")) == 1 and box.calls("sleep") == []
    assert ("labctl-error: master1 packages: the mirror http://10.0.0.1:3142/debian has no suite trixie-updates "
            "(its Release file: 404)") in box.console_lines()


def test_apt_waits_for_the_lock_and_no_daemon_starts_during_an_install(box):
    box.stub("dpkg")
    box.stub("apt-get", f'[ -x "{box.root}/policy-rc.d" ] && "{box.root}/policy-rc.d"; echo "policy=$?"')
    result = box.sh("apt_install packages haproxy")
    assert result.returncode == 0, result.stderr
    install = box.calls("apt-get")[-1]
    assert install[-2:] == ["install", "haproxy"] and "DPkg::Lock::Timeout=600" in install
    assert "policy=101" in result.stdout  # invoke-rc.d and deb-systemd-invoke would not start it
    assert not (box.root / "policy-rc.d").exists()
    assert box.calls("dpkg") == [["--configure", "-a"]]  # an install an earlier boot cut short is finished


def test_with_a_mirror_apt_reads_it_alone(box):
    apt = box.root / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text("Types: deb\nURIs: mirror+file:///etc/apt/mirrors/"
                                                           "debian.list\nSuites: trixie trixie-updates\n")
    (apt / "sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    (box.root / "os-release").write_text('ID=debian\nVERSION_CODENAME=trixie\n')
    box.set(APT_MIRROR="http://10.0.0.1:3142/debian", APT_MIRROR_UPDATES="yes",
            APT_SECURITY_MIRROR="http://10.0.0.1:3142/debian-security")
    for _ in range(2):  # idempotent: a resumed step does it again
        result = box.sh("apt_sources packages")
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (apt / "labctl-aside").iterdir()) == ["debian.sources", "sources.list"]
    assert [p.name for p in (apt / "sources.list.d").iterdir()] == ["labctl.sources"]
    from labctl.image.aptsources import parse_deb822

    sources = parse_deb822((apt / "sources.list.d" / "labctl.sources").read_text())
    assert [(s.uri, s.suites) for s in sources] == [("http://10.0.0.1:3142/debian", ("trixie", "trixie-updates")),
                                                    ("http://10.0.0.1:3142/debian-security", ("trixie-security",))]
