"""Reliability figures against a real private libvirtd (TCG; the blank base image never boots, so
domains idle in the BIOS): SIGKILL at every step boundary of `up` then rerun, Ctrl-C, two `up` on
one lab, two labs at once, a libvirtd restart in the middle of `up`, and destroy safety.

Each figure is printed as `FIGURE name: …` and collected in build/figures.json for the README."""

import json
import signal
import time
from pathlib import Path

import libvirt
import pytest

from tests.labenv import lab_env, labctl, labctl_popen, normalized, record_figure, snapshot, write_lab

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
STEP_PREFIXES = ("base image ", "network ", "node ", "start ")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def small(daemon, work):
    """A three-node lab (gateway, lb1, master1): nine step boundaries."""
    return lab_env(daemon, work, write_lab(work, "rel", masters=1, workers=0))


def lab_objects(daemon, lab: str) -> dict:
    conn = libvirt.open(daemon.uri)
    try:
        snap = normalized(snapshot(conn))
    finally:
        conn.close()
    return {
        "domains": [d for d in snap["domains"] if d[0].startswith(f"{lab}-")],
        "networks": [n for n in snap["networks"] if n[0].startswith(f"{lab}-")],
        "volumes": [v for v in snap["volumes"] if v.startswith(f"{lab}-")],
    }


def kill_after_steps(env: dict, steps: int, signum: int = signal.SIGKILL) -> tuple[int, str]:
    """Start `up`, send ``signum`` once it has reported ``steps`` completed steps; (exit code, stderr)."""
    proc = labctl_popen(env, "up", "--no-wait")
    seen, lines = 0, []
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    while seen < steps and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        seen += line.startswith(STEP_PREFIXES)
    if proc.poll() is None:
        proc.send_signal(signum)
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + rest


def test_sigkill_at_every_step_boundary_then_rerun_converges(daemon, small):
    first = labctl(small, "up", "--no-wait")
    assert first.returncode == 0, first.stderr
    reference = lab_objects(daemon, "rel")
    boundaries = sum(line.startswith(STEP_PREFIXES) for line in first.stderr.splitlines())
    assert boundaries == 9 and len(reference["domains"]) == 3
    assert labctl(small, "destroy", "--yes").returncode == 0
    converged = 0
    for steps in range(0, boundaries):
        kill_after_steps(small, steps)
        rerun = labctl(small, "up", "--no-wait")
        assert rerun.returncode == 0, f"after a kill at boundary {steps}: {rerun.stderr}"
        converged += lab_objects(daemon, "rel") == reference
        assert labctl(small, "destroy", "--yes").returncode == 0
        assert lab_objects(daemon, "rel") == {"domains": [], "networks": [], "volumes": []}
    record_figure("interrupt", {"boundaries_tried": boundaries, "converged": converged})
    assert converged == boundaries


def test_ctrl_c_stops_cleanly_and_the_next_up_resumes(daemon, small):
    code, stderr = kill_after_steps(small, 4, signal.SIGINT)
    assert code == 130, stderr
    assert "interrupted; run the same command again to resume, or `labctl destroy`" in stderr
    assert "Traceback" not in stderr
    assert labctl(small, "up", "--no-wait").returncode == 0
    assert len(lab_objects(daemon, "rel")["domains"]) == 3
    assert labctl(small, "destroy", "--yes").returncode == 0


def test_two_ups_on_one_lab_one_proceeds_one_is_refused(daemon, small):
    holder = labctl_popen(small, "up", "--timeout", "60")  # waits for a `ready` that never comes
    try:
        lock = Path(small["XDG_DATA_HOME"]) / "labctl" / "rel" / "lock"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text()):
            time.sleep(0.2)
        second = labctl(small, "up", "--no-wait")
        assert second.returncode == 1
        assert f"labctl: error: lab `rel` is busy (pid {holder.pid}, command up)" in second.stderr
    finally:
        holder.send_signal(signal.SIGINT)
        holder.communicate(timeout=120)
    assert labctl(small, "destroy", "--yes").returncode == 0
    record_figure("concurrency_same_lab", {"proceeded": 1, "refused": 1})


def test_two_labs_at_once_both_succeed(daemon, work):
    envs = [lab_env(daemon, work, write_lab(work, name, masters=1, workers=0)) for name in ("one", "two")]
    procs = [labctl_popen(env, "up", "--no-wait") for env in envs]
    results = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in results]
    for env, name in zip(envs, ("one", "two"), strict=True):
        rows = json.loads(labctl(env, "status", "-o", "json").stdout)
        assert [row["state"] for row in rows] == ["running"] * 3, name
    for env in envs:
        assert labctl(env, "destroy", "--yes").returncode == 0
    record_figure("concurrency_two_labs", {"labs": 2, "succeeded": 2})


def test_libvirtd_restart_in_the_middle_of_up(daemon, small):
    proc = labctl_popen(small, "up", "--no-wait")
    assert proc.stderr is not None
    line = proc.stderr.readline()
    while line and not line.startswith("network "):
        line = proc.stderr.readline()
    daemon.restart_libvirtd()
    _, rest = proc.communicate(timeout=300)
    if proc.returncode != 0:  # the usual case: the connection broke under it
        errors = [x for x in rest.splitlines() if x.startswith("labctl: error:")]
        assert len(errors) == 1 and "Traceback" not in rest, rest
    rerun = labctl(small, "up", "--no-wait")
    assert rerun.returncode == 0, rerun.stderr
    assert len(lab_objects(daemon, "rel")["domains"]) == 3
    assert labctl(small, "destroy", "--yes").returncode == 0
    record_figure("daemon_restart", {"first_up_exit": proc.returncode, "rerun_converged": True})
