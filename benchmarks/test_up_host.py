"""2, 3 and 5: the host-side work of `up` against the run's private libvirtd, guests not booted.

The lab's image is a blank qcow2 (tests/labenv.py), so every domain starts and idles in its BIOS:
what is timed is labctl's own work (load and plan the lab, the host gate, the image from the cache,
secrets, seeds, the base volume, networks, overlays and seed volumes, domain definitions, starts),
from nothing to every domain running, for 3, 7, 15 and 31 nodes. Each run starts from no lab (the
previous one destroyed, untimed); the base image stays in the pool, as on a host that has run a
lab before (the first, untimed, run puts it there).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from pathlib import Path

import pytest

from benchmarks.measure import (
    ChildRun,
    Results,
    Sample,
    allocated,
    environ,
    labctl_reporting_peak_rss,
    node_disks,
    peak_rss_kib,
    run_child,
)
from labctl.backends import open_backend
from labctl.lab.config import load_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.ops import lifecycle
from labctl.ops.events import QuietEvents
from labctl.ops.imagesupply import image_for_lab
from labctl.ops.preflight import refuse_unready_host
from tests.labenv import lab_env, write_lab

SIZES = (3, 7, 15, 31)
DEFAULT_SIZE = 7
RUNS = int(os.environ.get("BENCH_UP_RUNS", "3"))
PROFILE_TOP = 15


def topology(nodes: int) -> tuple[int, int]:
    """(masters, workers) of a lab of ``nodes`` with one gateway and one load balancer: the default
    lab's 3 masters from 7 nodes on, 1 below."""
    masters = 1 if nodes < 7 else 3
    return masters, nodes - 2 - masters


class StepClock(QuietEvents):
    """Events that note when each step finished, to split a run into its phases."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.steps: list[tuple[float, str]] = []

    def step(self, what: str, did: str) -> None:
        self.steps.append((time.perf_counter() - self.began, what))

    def phases(self, *args: object) -> None:  # the readiness callback of Events; `up` here never waits
        pass

    def split(self, total: float) -> dict[str, float]:
        """Seconds per phase, from when the last step of each kind finished (they come in order)."""
        last: dict[str, float] = {}
        for at, what in self.steps:
            last[PHASES[what.split()[0]]] = at
        phases, before = {}, 0.0
        for name, end in last.items():
            phases[name] = end - before
            before = end
        phases["closing"] = total - before
        return phases


# The first word of a step of `up` -> the phase it ends.
PHASES = {"base": "plan, gate, image cache, lock, base volume", "network": "networks",
          "node": "secrets, seeds, volumes, domains", "start": "starts"}


class Lab:
    """One lab.yaml of a given size, driven in-process through labctl's library against the daemon."""

    def __init__(self, daemon, work: Path, nodes: int) -> None:
        masters, workers = topology(nodes)
        self.nodes = nodes
        self.config = write_lab(work, name=f"b{nodes}", masters=masters, workers=workers)
        self.env = lab_env(daemon, work, self.config)
        self.uri = daemon.uri

    def up(self, events: QuietEvents | None = None) -> None:
        with environ(self.env):
            plan = plan_lab(load_lab(self.config))
            with open_backend("libvirt", self.uri) as backend:
                lifecycle.up(plan, backend, LabState.for_lab(plan.lab.name), events or QuietEvents(),
                             supply_image=lambda lab: image_for_lab(lab, quiet=True), gate=refuse_unready_host,
                             wait=False)

    def destroy(self) -> None:
        with environ(self.env):
            lab = load_lab(self.config)
            with open_backend("libvirt", self.uri) as backend:
                lifecycle.destroy(lab.name, backend, LabState.for_lab(lab.name), QuietEvents())

    def cli_up(self) -> ChildRun:
        """`labctl up --no-wait` as a command, reporting its peak RSS."""
        return run_child(labctl_reporting_peak_rss("up", "--no-wait"), env=self.env, timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("up")


@pytest.mark.parametrize("nodes", SIZES)
def test_host_side_up(nodes, daemon, work, results: Results):
    lab = Lab(daemon, work, nodes)
    lab.up()  # untimed: the image into the cache, the base volume into the pool
    lab.destroy()
    seconds, phases = [], []
    try:
        for _ in range(RUNS):
            events = StepClock()
            began = time.perf_counter()
            lab.up(events)
            seconds.append(time.perf_counter() - began)
            phases.append(events.split(seconds[-1]))
            lab.destroy()
    finally:
        lab.destroy()
    by_phase = {name: Sample(tuple(run[name] for run in phases)) for name in phases[0]}
    results.record(f"up/{nodes}", nodes=nodes, topology=topology(nodes), seconds=Sample(tuple(seconds)),
                   phases=by_phase)


def test_profile_of_the_largest(daemon, work, results: Results):
    lab = Lab(daemon, work, max(SIZES))
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        lab.up()
        profiler.disable()
    finally:
        lab.destroy()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(PROFILE_TOP)
    by_cumulative = out.getvalue()
    out = io.StringIO()
    stats.stream = out
    stats.sort_stats("tottime").print_stats(PROFILE_TOP)
    results.record(f"up/profile/{max(SIZES)}", cumulative=_table(by_cumulative), own=_table(out.getvalue()))


def _table(text: str) -> list[str]:
    """pstats' table without its preamble, paths shortened to the package."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    keep = [line.rstrip() for line in lines[start:] if line.strip()]
    return [_short(line) for line in keep]


def _short(line: str) -> str:
    for marker in ("/site-packages/", "/lib/python3", str(Path(__file__).resolve().parent.parent) + "/"):
        if marker in line:
            head, _, tail = line.partition(marker)
            prefix = head[: head.rfind(" ") + 1] if " " in head else ""
            line = prefix + (tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail)
    return line


def test_disk_per_node_and_peak_rss(daemon, work, results: Results):
    """3: what each node's disk costs at creation; 5: labctl's peak RSS through `labctl up --no-wait`."""
    from tests.e2e.image import e2e_image

    lab = Lab(daemon, work, DEFAULT_SIZE)
    rss, wall = [], []
    try:
        for _ in range(RUNS):
            done = lab.cli_up()
            assert done.returncode == 0, done.stderr[-2000:]
            rss.append(peak_rss_kib(done.stderr))
            wall.append(done.seconds)
            disks = node_disks(daemon.base_dir / "pool", lab.config.stem)
            lab.destroy()
        big = Lab(daemon, work, max(SIZES)).cli_up()
        assert big.returncode == 0, big.stderr[-2000:]
        Lab(daemon, work, max(SIZES)).destroy()
    finally:
        lab.destroy()
    image, _ = e2e_image(log=lambda line: print(f"[bench image] {line}", flush=True))
    full = allocated(image.path)
    results.record("rss/7", max_rss_kib=Sample(tuple(rss)), cli_seconds=Sample(tuple(wall)),
                   max_rss_kib_31=peak_rss_kib(big.stderr), cli_seconds_31=big.seconds)
    results.record("disk/7", per_node=disks, full_copy_bytes=full, full_copy_of=image.path.name,
                   overlay=Sample(tuple(d["overlay"] for d in disks.values())),
                   seed=Sample(tuple(d["seed"] for d in disks.values())))
