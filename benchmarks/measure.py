"""How the benchmarks time things and keep the figures: repeated runs reduced to median and min–max,
contenders interleaved round by round (the machine is shared, so its load drifts; interleaving puts
both sides of a ratio under the same drift), peak RSS of a child process, and one results file that
the report is written from."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.lab.accel import choose_accel, read_host_facts

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("BENCH_RESULTS") or REPO / "build" / "bench" / "results.json")


@dataclass(frozen=True)
class Sample:
    """Repeated measurements of one quantity (seconds, bytes, KiB…)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": len(self.values),
                "values": list(self.values)}


def timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for, so far."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class Timing:
    """Wall and CPU seconds of repeated calls. On a shared machine the wall time carries other
    processes' load; the CPU time (ours plus our children's) is the cost itself."""

    wall: Sample
    cpu: Sample

    def as_dict(self) -> dict[str, Any]:
        return {"wall": self.wall.as_dict(), "cpu": self.cpu.as_dict()}


def interleaved(contenders: Mapping[str, Callable[[], object]], rounds: int,
                setup: Callable[[], object] | None = None) -> dict[str, Timing]:
    """Each contender timed once per round, in turn (the order alternating each round); ``setup``
    runs untimed before every call."""
    names = list(contenders)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            if setup is not None:
                setup()
            cpu_before = cpu_seconds()
            wall[name].append(timed(contenders[name]))
            cpu[name].append(cpu_seconds() - cpu_before)
    return {name: Timing(Sample(tuple(wall[name])), Sample(tuple(cpu[name]))) for name in names}


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` for the block (labctl reads its dirs from it at call time)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class ChildRun:
    returncode: int
    seconds: float
    stdout: str
    stderr: str


def run_child(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600) -> ChildRun:
    """Run ``argv`` to its end (killed at ``timeout``): its exit status, wall time and output."""
    began = time.perf_counter()
    done = subprocess.run(list(argv), env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    return ChildRun(done.returncode, time.perf_counter() - began, done.stdout, done.stderr)


# `python -m labctl ARGS…` that writes, as it exits, its own peak RSS to stderr: VmHWM, the high-water
# mark of the address space exec made. (wait4's ru_maxrss would not do: Linux carries the forking
# parent's high-water mark across exec into it, so it reports the benchmark process's size.)
_PEAK_RSS_WRAPPER = r"""
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    sys.stderr.write(f"\nPEAK_RSS_KIB {peak}\n")
atexit.register(report)
sys.argv[0] = "labctl"
runpy.run_module("labctl", run_name="__main__", alter_sys=True)
"""


def labctl_reporting_peak_rss(*args: str) -> list[str]:
    return [sys.executable, "-c", _PEAK_RSS_WRAPPER, *args]


def peak_rss_kib(stderr: str) -> int:
    """The peak RSS a :func:`labctl_reporting_peak_rss` run wrote (KiB)."""
    found = re.search(r"^PEAK_RSS_KIB (\d+)$", stderr, re.M)
    if found is None:
        raise ValueError(f"no peak RSS in the output: {stderr[-500:]}")
    return int(found[1])


@dataclass
class Results:
    """Every figure of the run, by name, saved after each one (a run cut short keeps what it got)."""

    path: Path = RESULTS
    data: dict[str, Any] = field(default_factory=dict)
    amendment: dict[str, Any] | None = None
    began: float = 0.0

    def start(self, argv: Sequence[str]) -> None:
        """A new results file; with ``BENCH_APPEND=1`` the last run's, its figures kept and the ones
        measured again replaced (the report says which, and when)."""
        command = " ".join(["pytest", *argv[1:]])
        if os.environ.get("BENCH_APPEND") and self.path.exists():
            self.data = json.loads(self.path.read_text())
            self.amendment = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command,
                              "load_start": os.getloadavg(), "figures": []}
            self.data.setdefault("amended", []).append(self.amendment)
        else:
            self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command,
                         "machine": machine(), "load_start": os.getloadavg(), "figures": {}}
        self.began = time.time()
        self.save()

    def record(self, name: str, **figure: Any) -> None:
        self.data.setdefault("figures", {})[name] = _plain(figure)
        if self.amendment is not None:
            self.amendment["figures"].append(name)
        print(f"BENCH {name}: {json.dumps(self.data['figures'][name])[:400]}", flush=True)
        self.save()

    def finish(self) -> None:
        done = {"load_end": os.getloadavg(), "total_seconds": round(time.time() - self.began, 1)}
        (self.amendment if self.amendment is not None else self.data).update(done)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, Sample | Timing):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {str(key): _plain(val) for key, val in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(val) for val in value]
    return value


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.system())
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(memory / 2**20, 1), "os": os_name,
            "kernel": platform.release(), "python": platform.python_version(),
            "accelerator": choose_accel("auto", read_host_facts()).reason}


def allocated(path: Path) -> int:
    """Bytes a file takes on disk (its blocks, not its apparent size)."""
    return path.stat().st_blocks * 512


def node_disks(pool: Path, lab: str) -> dict[str, dict[str, int]]:
    """Per node: the bytes its overlay and its seed ISO take in the pool, right after `up`."""
    found: dict[str, dict[str, int]] = {}
    for path in sorted(pool.glob(f"{lab}-*")):
        node = path.name.removeprefix(f"{lab}-").split("-")[0]
        kind = "seed" if path.name.endswith("-seed.iso") else "overlay"
        found.setdefault(node, {})[kind] = allocated(path)
    return found
