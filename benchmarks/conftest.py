"""The benchmark run (`make bench`): one results file for the whole session (build/bench/results.json,
which `python -m benchmarks.report` turns into docs/benchmarks.md), one private libvirtd in a network
namespace of the run's own (ended by pid, the namespace deleted, at the end), and the VM-booting
comparison last, so the lighter figures are not measured beside booting guests of our own."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.measure import Results
from tests.conftest import isolated_home  # noqa: F401 - the tests' own XDG dirs per benchmark, autouse

LAST = ("test_boot_tcg.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name in LAST)


@pytest.fixture(scope="session")
def results() -> Iterator[Results]:
    found = Results()
    found.start(sys.argv)
    try:
        yield found
    finally:
        found.finish()


@pytest.fixture(scope="session")
def daemon():
    """A real libvirtd of the run's own, in a private network namespace (root); the run fails where
    it cannot start one, rather than publish figures measured against something else."""
    from tests.harness.libvirtd import PrivateLibvirtd, can_run

    ok, why = can_run()
    if not ok:
        pytest.fail(f"the benchmarks need a private libvirtd: {why} (run as root after `make bench-deps`)")
    base = Path("/tmp") / f"lcb-{os.getpid()}"  # short: unix socket paths are limited to 107 bytes
    base.mkdir(exist_ok=True)
    try:
        with PrivateLibvirtd(base) as running:
            (base / "console").mkdir(exist_ok=True)
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)

