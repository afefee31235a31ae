"""How the benchmarks time things and keep the figures: repeated runs reduced to median and min–max,
contenders interleaved round by round (the machine is shared, so its load drifts; interleaving puts
both sides of a ratio under the same drift), peak RSS of a child process, and one results file that
the report is written from."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labctl.lab.accel import choose_accel, read_host_facts

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "build" / "bench" / "results.json"


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
    max_rss_kib: int
    stdout: str
    stderr: str


def run_child(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600) -> ChildRun:
    """Run ``argv`` to its end; its wall time and its peak RSS (``wait4``: the child's own rusage, the
    largest of it and the children it waited for), not the benchmark process's."""
    out_path, err_path = (RESULTS.parent / f".child.{os.getpid()}.{name}" for name in ("out", "err"))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
    status, usage = _wait(proc, began + timeout)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - began
    stdout, stderr = (path.read_text(errors="replace") for path in (out_path, err_path))
    out_path.unlink()
    err_path.unlink()
    return ChildRun(proc.returncode, seconds, usage.ru_maxrss, stdout, stderr)


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, Any]:
    """The child's wait status and rusage; killed at ``deadline``."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            return status, usage
        time.sleep(0.005)


@dataclass
class Results:
    """Every figure of the run, by name, saved after each one (a run cut short keeps what it got)."""

    path: Path = RESULTS
    data: dict[str, Any] = field(default_factory=dict)

    def start(self, argv: Sequence[str]) -> None:
        self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "started_at": time.time(),
                     "command": " ".join(["pytest", *argv[1:]]), "machine": machine(), "load_start": os.getloadavg(),
                     "figures": {}}
        self.save()

    def record(self, name: str, **figure: Any) -> None:
        self.data.setdefault("figures", {})[name] = _plain(figure)
        print(f"BENCH {name}: {json.dumps(self.data['figures'][name])[:400]}", flush=True)
        self.save()

    def finish(self) -> None:
        self.data["load_end"] = os.getloadavg()
        self.data["total_seconds"] = round(time.time() - self.data.get("started_at", time.time()), 1)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, Sample | Timing):
        return value.as_dict()
    if isinstance(value, ChildRun):
        return {key: val for key, val in asdict(value).items() if key not in ("stdout", "stderr")}
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
