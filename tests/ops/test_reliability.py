"""Reliability figures against a real private libvirtd (TCG; the blank base image never boots, so
domains idle in the BIOS): SIGKILL at every step boundary of `up` then rerun, Ctrl-C, two `up` on
one lab, two labs at once, a libvirtd restart in the middle of `up`, and destroy safety.

Interruptions land by construction: labctl's test-only pause (LABCTL_TEST_PAUSE_AFTER_STEP) holds `up`
right after a given step until the test has sent its signal, whatever the machine's load, and each
test asserts that the signal landed. Each figure is printed as `FIGURE name: …` and collected in
build/figures.json for the README."""

import json
import os
import signal

import libvirt
import pytest

from labctl.cli.output import PAUSE_AFTER_STEP
from tests.labenv import (
    hold_at_pause,
    interrupt_after_step,
    lab_env,
    labctl,
    labctl_popen,
    normalized,
    record_figure,
    snapshot,
    write_lab,
)

pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.races]
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


def test_sigkill_at_every_step_boundary_then_rerun_converges(daemon, small):
    first = labctl(small, "up", "--no-wait")
    assert first.returncode == 0, first.stderr
    reference = lab_objects(daemon, "rel")
    boundaries = sum(line.startswith(STEP_PREFIXES) for line in first.stderr.splitlines())
    assert boundaries == 9 and len(reference["domains"]) == 3
    assert labctl(small, "destroy", "--yes").returncode == 0
    landed = converged = 0
    for step in range(1, boundaries + 1):
        killed = interrupt_after_step(small, step)
        assert killed.landed, f"the SIGKILL after step {step} did not land: exit {killed.code}: {killed.stderr}"
        landed += 1
        rerun = labctl(small, "up", "--no-wait")
        assert rerun.returncode == 0, f"after a kill at boundary {step}: {rerun.stderr}"
        converged += lab_objects(daemon, "rel") == reference
        assert labctl(small, "destroy", "--yes").returncode == 0
        assert lab_objects(daemon, "rel") == {"domains": [], "networks": [], "volumes": []}
    record_figure("interrupt", {"boundaries": boundaries, "kills_landed": landed, "converged": converged})
    assert converged == landed == boundaries


def test_ctrl_c_stops_cleanly_and_the_next_up_resumes(daemon, small):
    interrupted = interrupt_after_step(small, 4, signal.SIGINT)
    assert interrupted.landed, f"exit {interrupted.code}: {interrupted.stderr}"
    assert interrupted.stderr.count("labctl: interrupted; run the same command again to resume, or `labctl destroy`")
    assert "Traceback" not in interrupted.stderr
    assert labctl(small, "up", "--no-wait").returncode == 0
    assert len(lab_objects(daemon, "rel")["domains"]) == 3
    assert labctl(small, "destroy", "--yes").returncode == 0
    record_figure("ctrl_c", {"landed": interrupted.landed, "exit": interrupted.code, "resumed": True})


def test_two_ups_on_one_lab_one_proceeds_one_is_refused(daemon, small, tmp_path):
    fifo = tmp_path / "pause"
    os.mkfifo(fifo)
    holder = labctl_popen({**small, PAUSE_AFTER_STEP: f"1:{fifo}"}, "up", "--no-wait")
    held = hold_at_pause(holder, fifo)
    try:
        assert held is not None, "the first up never reached its first step"
        second = labctl(small, "up", "--no-wait")  # the first holds the lock while paused
        assert second.returncode == 1
        assert f"labctl: error: lab `rel` is busy (pid {holder.pid}, command up)" in second.stderr
    finally:
        if held is not None:
            os.close(held)
        holder.communicate(timeout=300)
    assert holder.returncode == 0
    assert labctl(small, "destroy", "--yes").returncode == 0
    record_figure("concurrency_same_lab", {"proceeded": int(holder.returncode == 0),
                                           "refused": int(second.returncode == 1)})


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
    record_figure("concurrency_two_labs", {"labs": 2, "succeeded": sum(proc.returncode == 0 for proc in procs)})


def test_libvirtd_restart_in_the_middle_of_up(daemon, small, tmp_path):
    fifo = tmp_path / "pause"
    os.mkfifo(fifo)
    proc = labctl_popen({**small, PAUSE_AFTER_STEP: f"2:{fifo}"}, "up", "--no-wait")  # after the first network
    held = hold_at_pause(proc, fifo)
    assert held is not None, "up never reached its second step"
    daemon.restart_libvirtd()  # while up holds its connection, paused
    os.close(held)
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 1, rest  # its connection broke under it
    errors = [x for x in rest.splitlines() if x.startswith("labctl: error:")]
    assert len(errors) == 1 and "Traceback" not in rest, rest
    rerun = labctl(small, "up", "--no-wait")
    assert rerun.returncode == 0, rerun.stderr
    assert len(lab_objects(daemon, "rel")["domains"]) == 3
    assert labctl(small, "destroy", "--yes").returncode == 0
    record_figure("daemon_restart", {"first_up_exit": proc.returncode, "one_line_errors": len(errors),
                                     "rerun_converged": True})
