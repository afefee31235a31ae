"""The VirtualBox harness: one cached build at a time, the real VBoxManage through the runner and the
wrapper, the same paths on both sides of the chroot, and a teardown that leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from labctl.backends.virtualbox.vboxmanage import VBoxManage

from .libvirtd import is_alive
from .vbox import (
    NAMESPACE_SCRIPT,
    VBOXMANAGE_IN_CHROOT,
    WRAPPER_SCRIPT,
    HarnessError,
    VBoxHarness,
    build_chroot,
    chroot_key,
    ensure_chroot,
    mmdebstrap_argv,
    mounts_under,
    unavailable,
)

MIRROR = "http://mirror.invalid/debian"


def fake_build(builds: list[str], delay: float = 0.0):
    def build(final: Path, mirror: str, log) -> None:
        builds.append(final.name)
        time.sleep(delay)
        tool = final / VBOXMANAGE_IN_CHROOT.lstrip("/")
        tool.parent.mkdir(parents=True)
        tool.write_text("")

    return build


def test_key_is_a_digest_of_the_build_inputs():
    assert chroot_key(MIRROR) == chroot_key(MIRROR)
    assert chroot_key(MIRROR) != chroot_key("http://other.invalid/debian")
    argv = mmdebstrap_argv(Path("/c/x.partial"), MIRROR)
    assert argv[-3:] == ["sid", "/c/x.partial", f"deb {MIRROR} sid main contrib"]
    assert "--include=virtualbox,virtualbox-dkms" in argv
    assert "--aptopt=Acquire::Check-Valid-Until \"false\"" in argv


def test_two_runs_build_once(tmp_path):
    builds: list[str] = []
    results: list[Path] = []
    build = fake_build(builds, delay=0.5)
    threads = [threading.Thread(target=lambda: results.append(ensure_chroot(tmp_path, MIRROR, lambda _: None, build)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == [f"vbox-chroot-{chroot_key(MIRROR)}"]
    assert results[0] == results[1] == tmp_path / builds[0]
    assert ensure_chroot(tmp_path, MIRROR, lambda _: None, fake_build(builds)) == results[0]  # cached
    assert len(builds) == 1


def test_an_interrupted_build_is_redone_from_scratch(tmp_path):
    final = tmp_path / "vbox-chroot-k"
    partial = tmp_path / "vbox-chroot-k.partial"
    (partial / "etc").mkdir(parents=True)
    (partial / "etc" / "leftover").write_text("from a killed build")
    argvs = []

    def mmdebstrap(argv, **_kwargs):
        argvs.append(argv)
        assert not (partial / "etc" / "leftover").exists(), "the leftovers went first"
        tool = Path(argv[-2]) / VBOXMANAGE_IN_CHROOT.lstrip("/")
        tool.parent.mkdir(parents=True)
        tool.write_text("")
        return subprocess.CompletedProcess(argv, 0, "", "")

    build_chroot(final, MIRROR, lambda _: None, run=mmdebstrap)
    assert argvs[0][:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert (final / VBOXMANAGE_IN_CHROOT.lstrip("/")).is_file() and not partial.exists()


def test_a_failed_build_leaves_no_final_directory(tmp_path):
    final = tmp_path / "vbox-chroot-k"

    def failing(argv, **_kwargs):
        return subprocess.CompletedProcess(argv, 1, "", "E: cannot reach the mirror\n")

    with pytest.raises(HarnessError, match="cannot reach the mirror"):
        build_chroot(final, MIRROR, lambda _: None, run=failing)
    assert not final.exists()


def test_unavailable_skips_but_fails_under_ci():
    with pytest.raises(pytest.skip.Exception, match="not root"):
        unavailable("not root", ci=False)
    with pytest.raises(pytest.fail.Exception, match=r"CI must run the VirtualBox tests.*not root"):
        unavailable("not root", ci=True)


def test_harness_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed on this host (make test-deps installs it)")
    result = subprocess.run(["shellcheck", str(NAMESPACE_SCRIPT), str(WRAPPER_SCRIPT)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout


# --- against the real VBoxManage ------------------------------------------------------------------


@pytest.mark.slow
def test_runner_takes_argv_with_or_without_the_program(vbox):
    assert vbox.run(["VBoxManage", "--version"])[0] == 0
    code, out, err = vbox.run(["--version"])
    assert (code, err) == (0, "") and out.startswith("7.")
    code, _out, err = vbox.run(["showvminfo", "no-such-vm"])
    assert code == 1 and "Could not find a registered machine named 'no-such-vm'" in err


@pytest.mark.slow
def test_wrapper_runs_the_real_vboxmanage_for_labctl(vbox, monkeypatch):
    monkeypatch.setenv("LABCTL_VBOXMANAGE", str(vbox.wrapper))
    manage = VBoxManage()  # the default runner: a subprocess of the program LABCTL_VBOXMANAGE names
    assert manage.program == str(vbox.wrapper)
    assert manage.check_version() >= (7, 0, 0)


@pytest.mark.slow
def test_paths_are_the_same_inside_and_outside(vbox):
    work = vbox.work / "paths"
    work.mkdir()
    source = work / "made-outside.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "16M"], check=True, timeout=60)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(source)], check=True, timeout=60,
                   capture_output=True)
    clone = work / "made-inside.vdi"
    code, _out, err = vbox.run(["clonemedium", "disk", str(source), str(clone), "--format", "VDI"])
    assert code == 0, err
    check = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vdi", str(source), str(clone)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # Relative paths from a directory inside the work directory mean the same there too.
    made = subprocess.run([str(vbox.wrapper), "createmedium", "disk", "--filename", "relative.vdi", "--size", "4"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert (work / "relative.vdi").is_file()


@pytest.mark.slow
def test_teardown_ends_its_processes_and_removes_everything(vbox):
    other = VBoxHarness(vbox.root)
    other.start()
    work = other.work
    code, _out, err = other.run(["createvm", "--name", "private-to-other", "--basefolder", str(work), "--register"])
    assert code == 0, err
    processes = other.processes()
    assert any("VBoxSVC" in command for command in processes.values())
    assert "private-to-other" not in vbox.run(["list", "vms"])[1], "each harness has its own VBoxSVC and home"
    other.stop()
    assert not any(is_alive(pid) for pid in processes)
    assert not work.exists() and not mounts_under(work)
    assert vbox.run(["--version"])[0] == 0, "the session's harness is untouched"
    other.stop()  # twice is fine


@pytest.mark.slow
def test_no_mounts_in_the_host_namespace(vbox):
    assert mounts_under(vbox.root) == []
    assert mounts_under(vbox.work) == []
    assert os.readlink("/proc/self/ns/mnt") != vbox._namespace
