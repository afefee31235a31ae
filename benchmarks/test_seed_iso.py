"""1. Seed ISO per node, the same files: labctl's in-process pycdlib against `genisoimage` and
`xorriso -as mkisofs` run as subprocesses (what the cloud-init tutorial, kcli and virt-lightning do),
interleaved round by round; and pycdlib's import cost, in fresh interpreters."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pycdlib
import pytest

from benchmarks.measure import Results, Sample, interleaved
from labctl.guest.seed import build_seed_iso, render_seed
from labctl.lab.config import load_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets

ROUNDS = 40
IMPORT_RUNS = 10
SMALL_FILES = {"meta-data": b"instance-id: bench\nlocal-hostname: bench\n",
               "user-data": b"#cloud-config\nhostname: bench\n",
               "network-config": b"version: 2\nethernets: {}\n"}
# The flags of each tool for a NoCloud seed (volume id cidata, Joliet and Rock Ridge names).
GENISOIMAGE = ["genisoimage", "-quiet", "-output", "{out}", "-volid", "cidata", "-joliet", "-rock", "{dir}"]
XORRISO = ["xorriso", "-as", "mkisofs", "-quiet", "-output", "{out}", "-volid", "cidata", "-joliet", "-rock",
           "{dir}"]


def pycdlib_alone(files: dict[str, bytes]) -> bytes:
    """The same ISO as build_seed_iso() through the same pycdlib calls, without labctl's pass that pins
    every date (which makes equal seeds byte-identical): how much of the cost that pass is."""
    iso = pycdlib.PyCdlib()
    out = io.BytesIO()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name in sorted(files):
        iso.add_fp(io.BytesIO(files[name]), len(files[name]), "/" + name.upper().replace("-", "_")[:8] + ".;1",
                   rr_name=name, joliet_path="/" + name)
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def tool_argv(template: list[str], out: Path, directory: Path) -> list[str]:
    return [arg.format(out=out, dir=directory) for arg in template]


def seed_contenders(files: dict[str, bytes], work: Path) -> dict:
    """The three ways to make the ISO of ``files``; the tools read them from a directory written once."""
    directory = work / "files"
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)

    def tool(template: list[str]):
        argv = tool_argv(template, work / "seed.iso", directory)
        return lambda: subprocess.run(argv, check=True, timeout=60, capture_output=True)

    return {"pycdlib (in-process)": lambda: build_seed_iso(files),
            "pycdlib without the date pinning": lambda: pycdlib_alone(files), "genisoimage": tool(GENISOIMAGE),
            "xorriso -as mkisofs": tool(XORRISO)}


@pytest.fixture(scope="module")
def node_seed(tmp_path_factory) -> dict[str, bytes]:
    """master2's seed of the default lab (the largest kind: it carries the cluster's CA keys)."""
    plan = plan_lab(load_lab())
    secrets = ensure_secrets(LabState.for_lab("k8s", tmp_path_factory.mktemp("state")), plan)
    return render_seed(plan, plan.node("master2"), secrets)


@pytest.mark.parametrize("case", ["master2 seed", "three small files"])
def test_seed_iso_pycdlib_vs_tools(case, node_seed, tmp_path, results: Results):
    missing = [tool for tool in ("genisoimage", "xorriso") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make bench-deps`")
    files = node_seed if case == "master2 seed" else SMALL_FILES
    contenders = seed_contenders(files, tmp_path)
    for call in contenders.values():  # warm: page cache, pycdlib's first-use paths
        call()
    samples = interleaved(contenders, ROUNDS)
    pycdlib = samples["pycdlib (in-process)"]
    ratios = {other: {"wall": pycdlib.wall.median / samples[other].wall.median,
                      "cpu": pycdlib.cpu.median / samples[other].cpu.median}
              for other in ("genisoimage", "xorriso -as mkisofs")}
    alone = samples["pycdlib without the date pinning"]
    ratios["pycdlib without the date pinning vs genisoimage"] = {
        "wall": alone.wall.median / samples["genisoimage"].wall.median,
        "cpu": alone.cpu.median / samples["genisoimage"].cpu.median}
    results.record(f"seed_iso/{case}", input_bytes=sum(map(len, files.values())), samples=samples, ratios=ratios,
                   commands={"genisoimage": " ".join(tool_argv(GENISOIMAGE, Path("seed.iso"), Path("files/"))),
                             "xorriso": " ".join(tool_argv(XORRISO, Path("seed.iso"), Path("files/")))})


IMPORT_PROBE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def test_pycdlib_import_cost(results: Results):
    """Seconds to import pycdlib (and labctl's seed module with it) in a fresh interpreter."""
    figures = {}
    for module in ("pycdlib", "labctl.guest.seed"):
        values = []
        for _ in range(IMPORT_RUNS):
            done = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(module=module)], check=True,
                                  capture_output=True, text=True, timeout=60)
            values.append(float(done.stdout))
        figures[module] = Sample(tuple(values))
    results.record("seed_iso/import", samples=figures)
