"""The host-side commands through main(): exit codes, stdout for data, one-line errors. Nothing is exec'd
(execvp is replaced by a recorder) and nothing goes on the network (the resolver and the backend are faked)."""

import os
import shutil
import socket
import stat
import threading
from pathlib import Path

import pytest
import yaml
from click.shell_completion import ShellComplete

from labctl.access import ssh as access
from labctl.backends.base import HypervisorFacts, Tool
from labctl.cli.context import Context
from labctl.cli.main import cli, main
from labctl.lab.config import load_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.ops.doctor import OK, Check, Facts
from labctl.pki.secrets import ensure_secrets
from tests.backends.fake import FakeBackend


def run(capsys, *args):
    """main() in-process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def plan():
    return plan_lab(load_lab())


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    """One lab's key and PKI, made once (RSA keys are slow) and copied into each test's state dir."""
    state = LabState.for_lab("k8s", base=tmp_path_factory.mktemp("data"))
    ensure_secrets(state, plan_lab(load_lab()))
    return state.root


@pytest.fixture
def created(plan, secrets_dir):
    """A lab that `up` has recorded (ssh, ssh-config and kubeconfig need one)."""
    state = LabState.for_lab(plan.lab.name)
    shutil.copytree(secrets_dir, state.root)
    state.save_record({"name": plan.lab.name, "id": "0123456789ab"})
    return state


@pytest.fixture
def execs(monkeypatch):
    seen = []
    monkeypatch.setattr(access.os, "execvp", lambda file, args: seen.append(list(args)))
    return seen


@pytest.fixture(autouse=True)
def no_default_uri(monkeypatch):
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)


def test_ssh_execs_openssh_with_the_lab_files(capsys, plan, created, execs):
    code, out, err = run(capsys, "ssh", "master1")
    assert (code, out, err) == (0, "", "")
    assert execs == [access.ssh_argv(plan, created, "master1", [], via_gateway=False)]
    assert (created.root / "known_hosts").read_text().count("ssh-ed25519") == len(plan.nodes)
    assert stat.S_IMODE((created.root / "ssh_config").stat().st_mode) == 0o600


def test_ssh_passes_the_command_and_its_options_through(capsys, plan, created, execs):
    assert run(capsys, "ssh", "worker1", "--", "ls", "-l", "/etc")[0] == 0
    assert run(capsys, "ssh", "worker1", "uname", "-a")[0] == 0  # options after NODE belong to the command
    assert execs[0][-4:] == [f"lab@{plan.node('worker1').internal.address.ip}", "ls", "-l", "/etc"]
    assert execs[1][-2:] == ["uname", "-a"] and "BatchMode=yes" in execs[1]


def test_ssh_to_a_remote_hypervisor_jumps_through_it_and_the_gateway(capsys, plan, created, execs):
    assert run(capsys, "--connect", "qemu+ssh://root@hv.example/system", "ssh", "master2")[0] == 0
    assert execs[0][execs[0].index("-J") + 1] == f"root@hv.example,lab@{access.gateway_address(plan)}"
    assert run(capsys, "ssh", "--jump", "me@hv2", "master2")[0] == 0
    assert execs[1][execs[1].index("-J") + 1] == f"me@hv2,lab@{access.gateway_address(plan)}"


def test_ssh_unknown_node_lists_the_valid_names(capsys, created, execs):
    code, out, err = run(capsys, "ssh", "mastr1")
    assert code == 1 and out == "" and execs == []
    assert err == ("labctl: error: unknown node 'mastr1'; nodes of lab k8s: gateway, lb1, master1, master2, "
                   "master3, worker1, worker2 (did you mean 'master1'?)\n")


def test_ssh_before_up_says_so(capsys, execs):
    code, _, err = run(capsys, "ssh", "master1")
    assert code == 1 and "lab k8s has not been created on this host" in err and "labctl up" in err


def test_ssh_config_prints_host_blocks(capsys, plan, created):
    code, out, _ = run(capsys, "ssh-config")
    assert code == 0
    assert [line.split()[1] for line in out.splitlines() if line.startswith("Host ")] == [
        f"k8s-{name}" for name in plan.node_names]
    assert f"    HostName {plan.node('lb1').internal.address.ip}" in out
    assert f"    UserKnownHostsFile {created.root / 'known_hosts'}" in out and "StrictHostKeyChecking yes" in out
    assert (created.root / "known_hosts").exists()


@pytest.fixture
def no_dns(monkeypatch):
    def unresolvable(host, port, *args):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)


def test_kubeconfig_prints_writes_and_merges(capsys, plan, created, no_dns, tmp_path, monkeypatch):
    code, out, _ = run(capsys, "kubeconfig")
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed["clusters"][0]["cluster"]["server"] == f"https://{plan.api_address}:6443"

    target = tmp_path / "lab.kubeconfig"
    code, out, err = run(capsys, "kubeconfig", "--output", str(target))
    assert code == 0 and out == "" and str(target) in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and yaml.safe_load(target.read_text()) == printed

    existing = tmp_path / "kube" / "config"
    existing.parent.mkdir()
    existing.write_text(yaml.safe_dump({"clusters": [{"name": "prod", "cluster": {"server": "https://p"}}],
                                        "current-context": "prod"}))
    monkeypatch.setenv("KUBECONFIG", f"{existing}{os.pathsep}{tmp_path / 'other'}")
    assert run(capsys, "kubeconfig", "--merge")[0] == 0
    merged = yaml.safe_load(existing.read_text())
    assert [c["name"] for c in merged["clusters"]] == ["prod", "labctl-k8s"]
    assert merged["current-context"] == "labctl-k8s"


def test_kubeconfig_output_and_merge_exclude_each_other(capsys, created):
    code, _, err = run(capsys, "kubeconfig", "--merge", "--output", "x")
    assert code == 2 and "exclude each other" in err


def test_console_execs_what_the_backend_attaches_with(capsys, backend, execs):
    assert run(capsys, "console", "worker2")[0] == 0
    assert execs == [["fake-console", "k8s-worker2"]]


@pytest.fixture
def backend(monkeypatch, tmp_path):
    fake = FakeBackend(console_dir=tmp_path)
    monkeypatch.setattr(Context, "backend", lambda self, lab: fake)
    return fake


def test_logs_prints_the_console_log(capsys, backend, tmp_path):
    (tmp_path / "k8s-lb1.console.log").write_bytes(b"[  OK  ] Reached target cloud-init\n")
    assert run(capsys, "logs", "lb1") == (0, "[  OK  ] Reached target cloud-init\n", "")
    code, _, err = run(capsys, "logs", "lb2")
    assert code == 1 and "unknown node 'lb2'" in err
    code, _, err = run(capsys, "logs", "master1")
    assert code == 1 and "no console log for master1 yet" in err


def test_logs_of_a_remote_lab_read_cloud_init_over_ssh(capsys, backend, created, execs):
    backend.console_dir = None
    assert run(capsys, "logs", "--follow", "master1")[0] == 0
    assert execs[0][-6:] == ["sudo", "tail", "-n", "+1", "-F", "/var/log/cloud-init-output.log"]


def test_stop_goes_in_reverse_boot_order_and_start_in_boot_order(capsys, backend, plan, tmp_path):
    define_lab(backend, plan)
    code, out, err = run(capsys, "stop", "--timeout", "30")
    assert code == 0 and out == ""
    assert [call[1] for call in backend.calls] == list(reversed(plan.node_names))
    assert {call[2] for call in backend.calls} == {30}
    assert "stop gateway: shut down" in err.splitlines()[-1]
    backend.calls.clear()
    assert run(capsys, "start", "--no-wait", "worker1", "gateway")[0] == 0
    assert backend.calls == [("start", "gateway"), ("start", "worker1")]


def define_lab(backend, plan, running=True):
    """The lab's nodes as `up` leaves them in the fake backend."""
    from labctl.backends.base import BaseImage, NodeRequest
    from labctl.lab.accel import TCG, Accel
    from labctl.lab.identity import node_tag

    image = BaseImage(Path("/base.qcow2"), "sha512:ab", "qcow2")
    backend.ensure_base_image(image)
    state = LabState.for_lab(plan.lab.name)
    state.save_record({**state.record(), "name": plan.lab.name, "id": "0123456789ab"})
    for node in plan.nodes:
        tag = node_tag(plan.lab.name, "0123456789ab", node.role, node.name)
        backend.ensure_node(NodeRequest(node, tag, b"seed", Accel(TCG, "test"), image))
        backend.domains[node.domain_name].running = running
    backend.calls.clear()


def test_start_waits_for_the_phases_of_this_boot(capsys, backend, tmp_path):
    log = tmp_path / "k8s-worker1.console.log"
    log.write_text("labctl-phase: worker1 ready\n")  # the previous boot's: must not count
    define_lab(backend, plan_lab(load_lab()), running=False)
    backend.boots = False
    code, _, err = run(capsys, "start", "worker1", "--timeout", "1")
    assert code == 1 and "not ready after 1s: worker1 (booting)" in err
    backend.boots = True
    backend.domains["k8s-worker1"].running = False
    code, _, err = run(capsys, "start", "worker1")
    assert code == 0 and "worker1: ready" in err and err.splitlines()[-1] == "lab k8s: 1 nodes ready"


def test_start_of_a_remote_lab_reads_phases_over_ssh(capsys, backend, created, monkeypatch):
    from labctl.access.readiness import REMOTE_PHASE

    define_lab(backend, plan_lab(load_lab()), running=False)
    backend.console_dir = None
    asked = []
    monkeypatch.setattr(access, "run_output", lambda argv, timeout: asked.append(argv) or "ready\n")
    code, _, err = run(capsys, "start", "master1", "lb1")
    assert code == 0 and "master1: ready" in err and "lb1: ready" in err
    assert [argv[-1] for argv in asked] == [REMOTE_PHASE, REMOTE_PHASE]
    assert sorted(argv[-2].split("@")[0] for argv in asked) == ["lab", "lab"]
    assert all("BatchMode=yes" in argv and "StrictHostKeyChecking=yes" in argv for argv in asked)


@pytest.mark.parametrize("command", [["stop"], ["start", "--no-wait"]])
def test_stop_and_start_wait_for_the_labs_lock(capsys, backend, monkeypatch, command):
    from labctl.lab.lock import lab_lock

    monkeypatch.setattr("labctl.lab.lock.LAB_LOCK_WAIT", 0.0)
    with lab_lock(LabState.for_lab("k8s"), "up", clock=lambda: 0.0, sleep=lambda s: None):
        code, _, err = run(capsys, *command)
    assert code == 1 and f"lab `k8s` is busy (pid {os.getpid()}, command up)" in err
    assert backend.calls == []


def test_stop_unknown_node_touches_nothing(capsys, backend):
    code, _, err = run(capsys, "stop", "master1", "nope")
    assert code == 1 and "unknown node 'nope'" in err and backend.calls == []


def test_doctor_prints_one_line_per_check_and_fails_on_fail(capsys, monkeypatch):
    missing = Tool("qemu-img", False, "libvirt makes the nodes' disks with it", "install qemu-utils (Debian/Ubuntu)")
    hypervisor = HypervisorFacts("qemu:///system", True, tools=(missing,), disk_free=1 << 40, networks=())
    facts = Facts("libvirt", "qemu:///system", True, hypervisor, mem_available_mib=64 * 1024, routes=(),
                  bridges=frozenset(), image=Check("image", OK, "cached"))
    monkeypatch.setattr("labctl.ops.preflight.gather_facts", lambda *args, **kwargs: facts)
    code, out, err = run(capsys, "doctor", "--offline")
    lines = out.splitlines()
    assert code == 1 and len(lines) == 9
    assert all(line.split()[0] in ("OK", "WARN", "FAIL") for line in lines)
    assert "FAIL  qemu-img: not found" in out and "(fix: install qemu-utils" in out
    assert err == "labctl: error: 1 check(s) failed: qemu-img (`labctl up` refuses to start until they pass)\n"


def test_shell_completion_of_commands_and_node_names():
    complete = ShellComplete(cli, {}, "labctl", "_LABCTL_COMPLETE")
    assert [item.value for item in complete.get_completions([], "ss")] == ["ssh", "ssh-config"]
    assert [item.value for item in complete.get_completions(["ssh"], "mas")] == ["master1", "master2", "master3"]
    assert [item.value for item in complete.get_completions(["--name", "dev", "stop", "gateway"], "w")] == [
        "worker1", "worker2"]
    assert complete.get_completions(["--config", "/nonexistent.yaml", "logs"], "") == []


def test_status_shows_each_nodes_phase_and_a_failed_nodes_own_line(capsys, backend, tmp_path):
    define_lab(backend, plan_lab(load_lab()))
    (tmp_path / "k8s-worker1.console.log").write_text(
        "labctl-phase: worker1 kubeadm-join\nlabctl-error: worker1 kubeadm-join: kubeadm join exited 1 (attempt 2 "
        "of 2): error execution phase preflight\nlabctl-phase: worker1 failed kubeadm-join\n")
    (tmp_path / "k8s-master1.console.log").write_text("labctl-phase: master1 ready\n")
    code, out, _ = run(capsys, "status")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and not line.startswith("worker1:")}
    assert rows["master1"][4] == "ready" and rows["worker1"][4:6] == ["failed", "kubeadm-join"]
    assert rows["gateway"][4] == "-"  # no console log (yet)
    assert out.splitlines()[-1] == ("worker1: kubeadm-join: kubeadm join exited 1 (attempt 2 of 2): error execution "
                                    "phase preflight")


def test_up_retry_failed_asks_every_node_and_waits_for_the_retried_ones(capsys, backend, created, monkeypatch,
                                                                        tmp_path):
    from labctl.guest.cloudconfig import RETRY

    plan = plan_lab(load_lab())
    define_lab(backend, plan)
    log = tmp_path / "k8s-worker1.console.log"
    log.write_text("labctl-phase: worker1 failed packages\n")
    asked = []

    def retry(argv, timeout):
        asked.append(argv[-4:])
        if argv[-4].endswith(str(plan.node("worker1").internal.address.ip)):
            # The restarted bootstrap prints on the console after the retry returned.
            threading.Timer(0.5, lambda: log.write_text(log.read_text() + "labctl-phase: worker1 start\n"
                                                        "labctl-phase: worker1 ready\n")).start()
            return "labctl-phase: worker1 start\nlabctl: worker1: retrying from packages\n"
        return "labctl: x: not failed (ready)\n"

    monkeypatch.setattr(access, "run_output", retry)
    from labctl.ops import cnisupply, imagesupply
    from tests.guest.manifests import FLANNEL

    monkeypatch.setattr(cnisupply, "cni_for_plan", lambda the_plan: FLANNEL)
    monkeypatch.setattr(imagesupply, "image_for_lab",
                        lambda lab, quiet: backend_image())
    monkeypatch.setattr("labctl.ops.preflight.refuse_unready_host", lambda the_plan, the_backend: None)
    for node in plan.node_names:
        if node != "worker1":
            (tmp_path / f"k8s-{node}.console.log").write_text(f"labctl-phase: {node} ready\n")
    code, _, err = run(capsys, "up", "--retry-failed")
    assert code == 0, err
    assert [command[1:] for command in asked] == [["sudo", "-n", RETRY]] * len(plan.node_names)
    assert "worker1: retrying from packages" in err.splitlines() and "worker1: ready" in err


def backend_image():
    from labctl.backends.base import BaseImage

    return BaseImage(Path("/base.qcow2"), "sha512:ab", "qcow2")


def test_up_refuses_objects_whose_state_directory_is_gone_and_creates_nothing(capsys, backend, isolated_home):
    plan = plan_lab(load_lab())
    define_lab(backend, plan)
    state = LabState.for_lab("k8s")
    shutil.rmtree(state.root)  # the lab's machines are there, its keys and CAs are not
    before = sorted(backend.domains)
    code, out, err = run(capsys, "up", "--no-wait")
    assert code == 1 and out == ""
    [line] = [line for line in err.splitlines() if line.startswith("labctl: error:")]
    assert line.startswith("labctl: error: lab k8s: fake:/// holds its objects (lab id 0123456789ab) but its state "
                           f"directory {state.root} is missing")
    assert "restore that directory" in line and "labctl --name k8s destroy --yes" in line
    assert not state.root.exists() and sorted(backend.domains) == before
    assert not any(call[0] == "start" for call in backend.calls)
