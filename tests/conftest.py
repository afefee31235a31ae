"""Every test gets its own XDG data and cache dirs: no test touches the user's labs or images.

Also: with ``CI`` set, a skipped test fails the run (a skip may only happen on a developer's machine,
where it prints why); ``--cpu-load N`` runs the tests with N CPU-bound processes beside them, started
and ended by pid, so that races show up here before CI finds them."""

import os
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from labctl.errors import LabError


def pytest_addoption(parser):
    parser.addoption("--cpu-load", type=int, default=0, metavar="N",
                     help="keep N CPU-bound processes running beside the tests (race hunting)")


@pytest.fixture(scope="session", autouse=True)
def cpu_load(request):
    """N busy loops for the whole run, ended by their pids at the end."""
    count = request.config.getoption("--cpu-load")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    if busy:
        print(f"\nrunning with {count} CPU-bound processes beside the tests: pids {[p.pid for p in busy]}")
    try:
        yield count
    finally:
        for proc in busy:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skip is a failure: every heavy test must run there (README: what is proven where)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("LABCTL_CONFIG", raising=False)
    monkeypatch.delenv("LABCTL_NAME", raising=False)
    return home


def pytest_report_header(config):
    """Say up front whether the libvirt and VirtualBox tests run against the real thing."""
    from tests.harness import libvirtd, vbox

    ok, why = libvirtd.can_run()
    libvirt_line = (f"libvirt: real private libvirtd in a network namespace ({why})" if ok else
                    f"libvirt: NO private libvirtd ({why}); libvirt tests fall back to test:///default in-process")
    ok, why = vbox.can_run()
    vbox_line = (f"VirtualBox: real VBoxManage in a cached Debian sid chroot ({why})" if ok else
                 f"VirtualBox: NO real VBoxManage ({why}); its tests skip (fail under CI)")
    return [libvirt_line, vbox_line]


@pytest.fixture(scope="module")
def daemon(request):
    """A real libvirtd of this test module's own, in a private network namespace; skipped, with
    the reason printed, where it cannot run (not root, binaries missing)."""
    from tests.harness.libvirtd import PrivateLibvirtd, can_run

    ok, why = can_run()
    if not ok:
        print(f"NOTE: no private libvirtd ({why})")
        pytest.skip(f"no private libvirtd here ({why})")
    # Short: unix socket paths are limited to 107 bytes.
    base = Path("/tmp") / f"lc-{os.getpid()}-{zlib.crc32(request.module.__name__.encode()):08x}"
    base.mkdir(exist_ok=True)
    try:
        with PrivateLibvirtd(base) as running:
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the daemon has stopped: its dirs, pool and logs go


@pytest.fixture(scope="session")
def vbox():
    """The real VBoxManage (VirtualBox 7 from Debian sid, in a chroot built once and cached), in a
    private mount namespace of this session's own: ``vbox.run(argv)``, ``vbox.wrapper``,
    ``vbox.work``. Skipped, with the reason printed, where it cannot run; under CI it fails instead."""
    from tests.harness.vbox import HarnessError, VBoxHarness, can_run, ensure_chroot, unavailable

    ok, why = can_run()
    if not ok:
        unavailable(why, ci=bool(os.environ.get("CI")))
    try:
        root = ensure_chroot()
    except (HarnessError, LabError) as err:  # no mirror in the apt sources, mmdebstrap failed
        unavailable(f"the VirtualBox chroot could not be built: {err}", ci=bool(os.environ.get("CI")))
    with VBoxHarness(root) as harness:
        yield harness


@pytest.fixture(scope="module")
def plan():
    """The default lab's plan."""
    from labctl.lab.config import load_lab
    from labctl.lab.plan import plan_lab

    return plan_lab(load_lab())


@pytest.fixture(scope="module")
def bridged():
    """A plan whose internal network is bridged onto the host's br0."""
    from labctl.lab.config import parse_lab
    from labctl.lab.plan import plan_lab

    return plan_lab(parse_lab("networks: {internal: {mode: bridge, bridge: br0, cidr: 192.168.1.0/24}}", "t"))


_STARTED: list[float] = []


def pytest_sessionstart(session):
    import time

    _STARTED.append(time.time())


def pytest_terminal_summary(terminalreporter):
    """Show the reliability figures and the end-to-end phase timings of this run at the end."""
    import json

    build = Path(__file__).resolve().parent.parent / "build"
    for name, title in (("figures.json", "reliability figures"), ("e2e-timings.json", "end-to-end timings")):
        path = build / name
        if path.is_file() and _STARTED and path.stat().st_mtime >= _STARTED[0]:
            terminalreporter.section(title)
            data = json.loads(path.read_text())
            shown = {k: data[k] for k in ("phases", "total") if k in data} if name.startswith("e2e") else data
            terminalreporter.write_line(json.dumps(shown, indent=2))
