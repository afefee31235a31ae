"""Phases from console text, the waiting loop (fake clock), and what the user sees."""

import io
import os
import subprocess
from concurrent.futures import Future

import pytest

from labctl.access.readiness import (
    REMOTE_PHASE,
    PhaseEvent,
    console_tail,
    log_reader,
    parse_phases,
    ssh_phase_reader,
    wait_ready,
)
from labctl.cli.output import TerminalEvents
from labctl.errors import LabError, ProvisionError
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab

CONSOLE = """\
[    1.234] Linux version 6.1.0-cloud-amd64
\x1b[0m[  OK  ] Started cloud-init.service
labctl-phase: master1 packages\r
labctl-phase: master2 packages
cloud-init[812]: labctl-phase: master1 containerd
labctl-phase: master1 failed kubeadm-init
"""


def test_parse_phases_picks_the_node_and_the_failed_step():
    assert parse_phases(CONSOLE, "master1") == [
        PhaseEvent("master1", "packages"), PhaseEvent("master1", "containerd"),
        PhaseEvent("master1", "failed", "kubeadm-init")]
    assert parse_phases(CONSOLE, "master2") == [PhaseEvent("master2", "packages")]
    assert parse_phases(CONSOLE, "master3") == []
    assert parse_phases("labctl-phase: master10 ready", "master1") == []


def test_console_tail_strips_control_sequences():
    tail = console_tail(CONSOLE, 2)
    assert tail == ["cloud-init[812]: labctl-phase: master1 containerd", "labctl-phase: master1 failed kubeadm-init"]
    assert console_tail(CONSOLE)[1] == "[  OK  ] Started cloud-init.service"


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def small_plan():
    return plan_lab(parse_lab("nodes: {worker: {count: 0}, master: {count: 1}}", "t"))


def scripted(timeline, fake):
    """Console text that grows with the fake clock: {node: [(at_seconds, line), …]}."""
    def read(name):
        return "".join(line + "\n" for at, line in timeline.get(name, []) if fake.now - 1000.0 >= at)
    return read


def test_wait_until_every_node_is_ready_plain_lines():
    fake, out = FakeTime(), io.StringIO()
    plan = small_plan()
    timeline = {name: [(4, f"labctl-phase: {name} prepare"), (10, f"labctl-phase: {name} ready")]
                for name in plan.node_names}
    progress = wait_ready(plan.nodes, scripted(timeline, fake), TerminalEvents(out, tty=False), timeout=60,
                          clock=fake.clock, sleep=fake.sleep)
    assert progress.all_ready
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["gateway: booting", "lb1: booting", "master1: booting"]
    assert "master1: prepare" in lines and lines[-1].endswith(": ready")
    assert fake.now - 1000.0 == 10, "stopped polling as soon as all were ready"


def test_failure_names_node_and_step_and_shows_the_console_tail():
    fake, out = FakeTime(), io.StringIO()
    plan = small_plan()
    timeline = {"gateway": [(0, "labctl-phase: gateway ready")],
                "lb1": [(0, "labctl-phase: lb1 ready")],
                "master1": [(2, "kubeadm: something broke"), (2, "labctl-phase: master1 failed kubeadm-init")]}
    with pytest.raises(ProvisionError) as caught:
        wait_ready(plan.nodes, scripted(timeline, fake), TerminalEvents(out, tty=False), timeout=60,
                   clock=fake.clock, sleep=fake.sleep)
    message = str(caught.value)
    assert message.startswith("node master1 failed at step kubeadm-init")
    assert "labctl logs master1" in message and "labctl ssh master1" in message and "\n" not in message
    assert "kubeadm: something broke" in out.getvalue()


def test_timeout_lists_who_is_not_ready():
    fake = FakeTime()
    plan = small_plan()
    timeline = {"gateway": [(0, "labctl-phase: gateway ready")], "lb1": [(5, "labctl-phase: lb1 haproxy")]}
    with pytest.raises(ProvisionError, match=r"not ready after 30s: lb1 \(haproxy\), master1 \(booting\)"):
        wait_ready(plan.nodes, scripted(timeline, fake), TerminalEvents(io.StringIO(), tty=False), timeout=30,
                   clock=fake.clock, sleep=fake.sleep)
    assert fake.now - 1000.0 <= 32, "bounded"


def test_tty_view_redraws_a_table():
    fake, out = FakeTime(), io.StringIO()
    plan = small_plan()
    timeline = {name: [(2, f"labctl-phase: {name} ready")] for name in plan.node_names}
    wait_ready(plan.nodes, scripted(timeline, fake), TerminalEvents(out, tty=True), timeout=60,
               clock=fake.clock, sleep=fake.sleep)
    text = out.getvalue()
    assert text.count("NODE") == 2 and "\x1b[4F\x1b[J" in text
    assert "master1    master   ready" in text


def test_quiet_view_prints_nothing():
    out = io.StringIO()
    fake = FakeTime()
    plan = small_plan()
    timeline = {name: [(0, f"labctl-phase: {name} ready")] for name in plan.node_names}
    wait_ready(plan.nodes, scripted(timeline, fake), TerminalEvents(out, tty=False, quiet=True), timeout=5,
               clock=fake.clock, sleep=fake.sleep)
    assert out.getvalue() == ""


def test_log_reader_reads_from_the_offset(tmp_path):
    log = tmp_path / "k8s-lb1.console.log"
    log.write_text("labctl-phase: lb1 ready\n")
    offset = log.stat().st_size
    with log.open("a") as handle:
        handle.write("labctl-phase: lb1 haproxy\n")
    read = log_reader({"lb1": log, "gateway": tmp_path / "missing.log", "master1": None}, {"lb1": offset})
    assert read("lb1") == "labctl-phase: lb1 haproxy\n"
    assert read("gateway") == "" and read("master1") == ""


def test_log_reader_asks_the_fallback_where_the_log_is_not_readable_here(tmp_path, monkeypatch):
    asked = []

    def fallback(name):
        asked.append(name)
        return f"labctl-phase: {name} ready\n"

    root_only = tmp_path / "k8s-lb1.console.log"
    root_only.write_text("labctl-phase: lb1 haproxy\n")

    def denied(path, mode="r"):
        raise PermissionError(13, "Permission denied", path)

    read = log_reader({"lb1": root_only, "master1": None, "gateway": tmp_path / "missing.log"}, {}, fallback)
    assert read("master1") == "labctl-phase: master1 ready\n"  # remote hypervisor: no path here
    assert read("gateway") == ""  # not written yet: nothing to ask about
    monkeypatch.setattr("labctl.access.readiness.open", denied, raising=False)
    assert read("lb1") == "labctl-phase: lb1 ready\n"
    assert asked == ["master1", "lb1"]


def at_once(fn, *args):
    """An executor's submit that runs the call before returning its (done) future."""
    done = Future()
    try:
        done.set_result(fn(*args))
    except Exception as err:  # noqa: BLE001 - handed on, as an executor does
        done.set_exception(err)
    return done


def test_ssh_phase_reader_turns_the_recorded_phase_into_a_phase_line_and_asks_sparingly():
    fake, answers, asked = FakeTime(), {"master1": [None, "kubeadm-init\n", "ready\n"]}, []

    def run(name):
        asked.append((name, fake.now))
        return answers[name].pop(0)

    read = ssh_phase_reader(run, fake.clock, at_once, every=10)
    assert read("master1") == ""  # not reachable yet
    fake.sleep(5)
    assert read("master1") == "" and len(asked) == 1  # asked again only after 10 s
    fake.sleep(5)
    assert parse_phases(read("master1"), "master1") == [PhaseEvent("master1", "kubeadm-init")]
    fake.sleep(10)
    assert parse_phases(read("master1"), "master1") == [PhaseEvent("master1", "ready")]
    assert [at - 1000.0 for _, at in asked] == [0, 10, 20]


def test_a_slow_ssh_read_never_holds_up_the_loop_and_is_not_doubled():
    fake, pending, asked = FakeTime(), Future(), []
    read = ssh_phase_reader(lambda name: None, fake.clock, lambda fn, name: asked.append(name) or pending, every=10)
    assert read("lb1") == ""  # returns at once, the read still in flight
    fake.sleep(30)
    assert read("lb1") == "" and asked == ["lb1"]  # still in flight: not asked twice
    pending.set_result("ready\n")
    assert parse_phases(read("lb1"), "lb1") == [PhaseEvent("lb1", "ready")]


def test_an_error_of_the_ssh_read_reaches_the_user():
    def run(name):
        raise LabError("ssh not found", "install it (openssh-client)")

    with pytest.raises(LabError, match="ssh not found"):
        ssh_phase_reader(run, FakeTime().clock, at_once)("lb1")


def test_a_failure_read_over_ssh_shows_the_step_and_cloud_init_tail():
    fake = FakeTime()
    out = "failed kubeadm-init\n[init] error: bad config\nlabctl: master1: kubeadm-init failed\n"
    read = ssh_phase_reader(lambda name: out if name == "master1" else "ready\n", fake.clock, at_once)
    stream = io.StringIO()
    with pytest.raises(ProvisionError, match="node master1 failed at step kubeadm-init"):
        wait_ready(small_plan().nodes, read, TerminalEvents(stream, tty=False), timeout=60,
                   clock=fake.clock, sleep=fake.sleep)
    assert "[init] error: bad config" in stream.getvalue()


@pytest.fixture
def node_shell(tmp_path):
    """REMOTE_PHASE in a real bash, its phase file moved into tmp_path, sudo a pass-through stub and journalctl
    one that prints the bootstrap's output (a file here) as `-n 30` would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n')
    (bin_dir / "sudo").chmod(0o755)
    phase, log = tmp_path / "run" / "phase", tmp_path / "bootstrap.log"
    (bin_dir / "journalctl").write_text(f'#!/bin/sh\necho "$@" | grep -q -- "-u labctl-bootstrap.service -n 30" '
                                        f'&& exec tail -n 30 {log}\nexit 1\n')
    (bin_dir / "journalctl").chmod(0o755)
    assert REMOTE_PHASE.count("/run/labctl/phase") == 1
    command = REMOTE_PHASE.replace("/run/labctl/phase", str(phase))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run():
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=30)
        return done.returncode, done.stdout

    return phase, log, run


def test_remote_phase_query_in_a_real_shell(node_shell):
    phase, log, run = node_shell
    assert run() == (0, "")  # this boot has recorded nothing yet
    phase.parent.mkdir()
    phase.write_text("kubeadm-init\n")
    assert run() == (0, "kubeadm-init\n")
    phase.write_text("failed kubeadm-init\n")
    code, out = run()  # the bootstrap's journal is unreadable: the failure still comes through, exit 0
    assert code == 0 and out.startswith("failed kubeadm-init\n") and "No such file" in out
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    code, out = run()
    assert code == 0 and out.splitlines() == ["failed kubeadm-init", *(f"line {i}" for i in range(20, 50))]
