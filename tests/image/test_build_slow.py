"""Real image builds: mmdebstrap from the apt mirror, contents read with debugfs without booting,
then a boot under QEMU/TCG with a NoCloud seed and no network device at all.

Set ``LABCTL_TEST_IMAGE_CACHE=DIR`` to keep the built images between runs (reused while their
manifest's SHA-512 still matches); otherwise they are built in pytest's temporary directories.
Alone on two cores a guest finishes cloud-init in 70-100 s; ``LABCTL_TEST_BOOT_TIMEOUT`` (seconds,
default 240) bounds the wait on a machine busy with other guests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from labctl.guest.seed import build_seed_iso
from labctl.image.build import BuiltImage, build_image, file_sha512, plan_packages, read_manifest
from labctl.resources import read_text
from tests.imagefs import debugfs, exists, installed_packages, to_raw

pytestmark = pytest.mark.slow

TOOLS = ("mmdebstrap", "mkfs.ext4", "debugfs", "qemu-img", "qemu-system-x86_64")
EXTRA = "haproxy"
BOOT_TIMEOUT = float(os.environ.get("LABCTL_TEST_BOOT_TIMEOUT", "240"))
END = "LABCTL-END"

# Runs in the guest once cloud-init's final stage has started it. It reports on the second serial
# port, which nothing else writes to: on the first, getty's terminal probes and late journal lines
# can land in the middle of a report line.
GUEST_CHECK = """\
exec >/dev/ttyS1 2>&1
cloud-init status --wait --long
echo "LABCTL-STATUS-RC=$?"
echo LABCTL-WARNINGS-BEGIN
grep -E 'WARNING|ERROR|Traceback' /var/log/cloud-init.log
echo LABCTL-WARNINGS-END
echo "LABCTL-ROOT-SIZE=$(df -B1 --output=size / | tail -n 1 | tr -d ' ')"
echo "LABCTL-HOSTNAME=$(hostname)"
echo LABCTL-END
"""


def _require_tools() -> None:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    reason = "needs root" if os.geteuid() != 0 else f"missing {', '.join(missing)}" if missing else ""
    if reason and os.environ.get("CI"):
        pytest.fail(f"image build test {reason} (CI must provide it)")
    if reason:
        pytest.skip(f"image build test {reason}")


def _cached(out_dir: Path, name: str) -> BuiltImage | None:
    manifest = out_dir / f"{name}.json"
    if not manifest.is_file():
        return None
    built = read_manifest(manifest)
    fresh = built.packages == plan_packages([EXTRA]) and built.path.is_file()
    return built if fresh and file_sha512(built.path) == built.sha512 else None


@pytest.fixture(scope="module", params=["trixie", "bookworm"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    _require_tools()
    suite, name = request.param, f"labctl-test-{request.param}"
    cache = os.environ.get("LABCTL_TEST_IMAGE_CACHE")
    out_dir = Path(cache) / name if cache else tmp_path_factory.mktemp(name)
    image = _cached(out_dir, name)
    if image is None:
        started = time.monotonic()
        image = build_image(name, out_dir, None, suite, [EXTRA])
        print(f"\n{suite}: image built in {time.monotonic() - started:.0f}s, {image.path.stat().st_size >> 20} MiB")
    return image


@pytest.fixture(scope="module")
def raw(built: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's file system as a raw file, for debugfs."""
    return to_raw(built.path, tmp_path_factory.mktemp("raw") / "root.raw")


def test_kernel_and_initrd_beside_the_image_match_the_one_inside(built: BuiltImage, raw: Path) -> None:
    assert built.kernel_version.endswith("-cloud-amd64")
    assert exists(raw, f"/boot/vmlinuz-{built.kernel_version}")
    assert exists(raw, f"/boot/initrd.img-{built.kernel_version}")
    assert built.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    assert built.initrd.stat().st_size > 1 << 20
    assert built.cmdline.startswith("root=LABEL=labctl-root ")


def test_packages_cloud_init_and_locales_are_installed(built: BuiltImage, raw: Path) -> None:
    packages = installed_packages(raw)
    assert set(built.packages) <= packages
    assert {"cloud-init", "locales", "openssh-server", EXTRA} <= packages
    assert exists(raw, "/usr/sbin/haproxy") and exists(raw, "/usr/sbin/locale-gen")
    assert debugfs(raw, "cat /etc/default/locale") == "LANG=C.UTF-8\n"


def test_pre_baked_role_daemons_are_left_for_the_roles_to_start(raw: Path) -> None:
    assert exists(raw, "/usr/lib/systemd/system/haproxy.service")
    wants = debugfs(raw, "ls /etc/systemd/system/multi-user.target.wants")
    assert "ssh.service" in wants and "haproxy.service" not in wants


def test_cloud_init_is_enabled_with_the_nocloud_datasource(raw: Path) -> None:
    wants = debugfs(raw, "ls /etc/systemd/system/cloud-init.target.wants")
    assert "cloud-init-local.service" in wants and "cloud-final.service" in wants
    assert not exists(raw, "/etc/cloud/cloud-init.disabled")
    cfg = yaml.safe_load(debugfs(raw, "cat /etc/cloud/cloud.cfg.d/90_labctl.cfg"))
    assert cfg["datasource_list"] == ["NoCloud", "None"]
    assert exists(raw, "/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service")


def test_nothing_instance_specific_is_baked_in(raw: Path) -> None:
    assert "ssh_host_" not in debugfs(raw, "ls /etc/ssh")
    assert re.search(r"Size: 0\b", debugfs(raw, "stat /etc/machine-id"))
    assert debugfs(raw, "cat /etc/hostname") == "localhost\n"
    root = next(line for line in debugfs(raw, "cat /etc/shadow").splitlines() if line.startswith("root:"))
    assert root.split(":")[1].startswith("!")  # locked, no password


def seed_files() -> dict[str, bytes]:
    """The lab's common cloud-config plus a user, and a runcmd that reports to the serial console."""
    user_data = yaml.safe_load(read_text("cloud-init", "common.yaml"))
    user_data["users"] = [
        {"name": "lab", "groups": ["sudo"], "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash",
         "lock_passwd": True, "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests t"]}
    ]
    user_data["runcmd"] = [
        ["sh", "-c", "echo LABCTL-RUNCMD-OK >/dev/ttyS0"],
        # Outside cloud-final, so that `cloud-init status --wait` can see it finish.
        ["systemd-run", "--no-block", "--unit=labctl-check", "/bin/sh", "-c", GUEST_CHECK],
    ]
    return {
        "meta-data": yaml.safe_dump({"instance-id": "labctl-test-1", "local-hostname": "imgtest"}).encode(),
        "user-data": ("#cloud-config\n" + yaml.safe_dump(user_data)).encode(),
        "network-config": yaml.safe_dump({"version": 2, "ethernets": {}}).encode(),
    }


def qemu_argv(built: BuiltImage, disk: Path, seed: Path, serial: Path, report: Path) -> list[str]:
    """TCG only, no network device at all, both disks virtio (the cloud kernel has no AHCI)."""
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "2",
        "-nographic", "-monitor", "none", "-serial", f"file:{serial}", "-serial", f"file:{report}",
        "-nic", "none", "-no-reboot",
        "-kernel", str(built.kernel), "-initrd", str(built.initrd), "-append", built.cmdline,
        "-drive", f"file={disk},if=virtio,format=qcow2",
        "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
    ]  # fmt: skip


@pytest.fixture
def vm(built: BuiltImage, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """A running guest on a 4 GiB overlay of the image; ended by its pid, whatever happens.

    Yields the process, the console log (ttyS0) and the check's report (ttyS1)."""
    disk, seed, serial = tmp_path / "root.qcow2", tmp_path / "seed.iso", tmp_path / "serial.log"
    report = tmp_path / "report.log"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(built.path), "-F", "qcow2", str(disk), "4G"], check=True
    )
    seed.write_bytes(build_seed_iso(seed_files()))
    with (tmp_path / "qemu.err").open("wb") as err:
        argv = qemu_argv(built, disk, seed, serial, report)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc, serial, report
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def wait_for_end(proc: subprocess.Popen[bytes], serial: Path, report: Path) -> tuple[str, str, float]:
    """The console text and the check's report, once the report is complete."""
    started, console, text = time.monotonic(), "", ""
    while time.monotonic() - started < BOOT_TIMEOUT:
        text = report.read_text(errors="replace") if report.exists() else ""
        console = serial.read_text(errors="replace") if serial.exists() else ""
        if END in text:
            return console, text, time.monotonic() - started
        assert proc.poll() is None, f"qemu exited with {proc.returncode}:\n{console[-3000:]}"
        time.sleep(2)
    pytest.fail(f"no {END} in the check's report within {BOOT_TIMEOUT:.0f}s:\n{text}\n{console[-3000:]}")


def test_image_boots_offline_and_cloud_init_finishes_cleanly(
    built: BuiltImage, vm: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    console, text, elapsed = wait_for_end(*vm)
    print(f"\n{built.suite}: booted and cloud-init finished in {elapsed:.0f}s (TCG)")
    assert "LABCTL-RUNCMD-OK" in console
    assert re.search(r"^status: done\s*$", text, re.M), text[-3000:]
    assert "LABCTL-STATUS-RC=0" in text, text[-3000:]
    warnings = text.split("LABCTL-WARNINGS-BEGIN", 1)[1].split("LABCTL-WARNINGS-END", 1)[0]
    assert warnings.strip() == "", warnings  # growpart, locale and the rest ran without a warning
    root_size = int(re.search(r"LABCTL-ROOT-SIZE=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert root_size > 3 << 30  # resizefs grew the 2 GiB file system to the 4 GiB disk
    assert "LABCTL-HOSTNAME=imgtest" in text
