"""Record what the real VBoxManage prints, for the parser tests and the backend's notes.

    .venv/bin/python -m tests.backends.virtualbox.record_outputs [OUT.json]

As root, with the VirtualBox harness (tests/harness/vbox.py): builds a lab-like setup (a NAT network,
a base VDI converted from a qcow2, a gateway and a worker VM with differencing disks, seed ISOs,
serial logs and extradata), then runs each command of interest and writes ``{case: {argv, code,
stdout, stderr}}`` with the run's work directory replaced by ``/WORK``. Outputs over 300 lines (usage
texts) keep their first and last lines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.harness.vbox import VBoxHarness, ensure_chroot

DEFAULT_OUT = Path(__file__).with_name("data") / "recorded.json"
KEEP_HEAD, KEEP_TAIL, TRIM_OVER = 12, 4, 300


class Recorder:
    def __init__(self, harness: VBoxHarness) -> None:
        self.harness = harness
        self.work = str(harness.work)
        self.cases: dict[str, dict[str, object]] = {}

    def path(self, *parts: str) -> str:
        return str(Path(self.work, *parts))

    def __call__(self, case: str | None, *args: str) -> tuple[int, str, str]:
        code, out, err = self.harness.run(list(args))
        if case is not None:
            self.cases[case] = {"argv": ["VBoxManage", *map(self._clean, args)], "code": code,
                                "stdout": self._clean(_trim(out)), "stderr": self._clean(_trim(err))}
        elif code != 0:
            raise RuntimeError(f"VBoxManage {' '.join(args)} failed: {err}")
        return code, out, err

    def _clean(self, text: str) -> str:
        return text.replace(self.work, "/WORK")


def _trim(text: str) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= TRIM_OVER:
        return text
    return "".join([*lines[:KEEP_HEAD], f"[… {len(lines) - KEEP_HEAD - KEEP_TAIL} lines …]\n", *lines[-KEEP_TAIL:]])


def write_iso(path: str) -> None:
    """A small ISO 9660 image (cidata) made with pycdlib, as labctl makes seeds."""
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    data = b"instance-id: recorded\n"
    iso.add_fp(io.BytesIO(data), len(data), "/META_DAT.;1", rr_name="meta-data", joliet_path="/meta-data")
    iso.write(path)
    iso.close()


def write_qcow2(path: str, size: str = "64M") -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size], check=True, timeout=60)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", path], check=True, timeout=60,
                   capture_output=True)


def lab_node(rec: Recorder, name: str, role: str, nics: Sequence[str], disk: str, seed: str) -> None:
    """A VM configured like a lab node: memory, cpus, boot order, NICs, serial log, virtio-scsi disks."""
    rec("createvm", "createvm", "--name", name, "--basefolder", rec.path("vms"), "--groups", "/labctl/k8s",
        "--ostype", "Debian_64", "--register")
    rec(None, "modifyvm", name, "--memory", "2048", "--cpus", "2", "--boot1", "disk", "--boot2", "dvd",
        "--boot3", "none", "--boot4", "none", "--audio-enabled", "off", "--usb-ohci", "off",
        "--uart1", "0x3F8", "4", "--uartmode1", "file", rec.path("logs", f"{name}.log"), *nics)
    rec(None, "storagectl", name, "--name", "virtio", "--add", "virtio-scsi", "--controller", "VirtIO",
        "--portcount", "2", "--bootable", "on")
    rec("createmedium-diff", "createmedium", "disk", "--filename", disk, "--diffparent", rec.path("media", "base.vdi"),
        "--format", "VDI")
    # A child of an immutable base is made auto-reset: it would be emptied at every VM start.
    rec("showmediuminfo-diff-autoreset", "showmediuminfo", "disk", disk)
    rec(None, "modifymedium", "disk", disk, "--autoreset", "off")
    rec(None, "storageattach", name, "--storagectl", "virtio", "--port", "0", "--device", "0", "--type", "hdd",
        "--medium", disk)
    rec(None, "storageattach", name, "--storagectl", "virtio", "--port", "1", "--device", "0", "--type",
        "dvddrive", "--medium", seed)
    for key, value in (("labctl/lab", "k8s"), ("labctl/lab-id", "0123abcd"), ("labctl/role", role)):
        rec(None, "setextradata", name, key, value)


def record(rec: Recorder) -> None:
    for folder in ("vms", "media", "logs"):
        Path(rec.path(folder)).mkdir()
    write_qcow2(rec.path("media", "base.qcow2"))
    for node in ("gateway", "worker1"):
        write_iso(rec.path("media", f"{node}-seed.iso"))
    rec("version", "--version")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", rec.path("media", "empty.qcow2"), "8M"], check=True,
                   timeout=60)
    rec("clonemedium-unwritten-qcow2", "clonemedium", "disk", rec.path("media", "empty.qcow2"),
        rec.path("media", "empty-clone.vdi"), "--format", "VDI")
    rec("natnetwork-add", "natnetwork", "add", "--netname", "k8s-nat", "--network", "10.213.7.0/24", "--enable",
        "--dhcp", "off")
    rec(None, "natnetwork", "add", "--netname", "other-nat", "--network", "10.213.8.0/24", "--enable", "--dhcp", "on")
    rec("natnetwork-exists", "natnetwork", "add", "--netname", "k8s-nat", "--network", "10.213.7.0/24", "--enable")
    rec("natnetwork-bad-cidr", "natnetwork", "add", "--netname", "half-made", "--network", "10.213.300.0/24")
    rec("list-natnetworks", "list", "natnetworks")
    rec("natnetwork-list", "natnetwork", "list")
    rec(None, "natnetwork", "remove", "--netname", "half-made")
    rec("natnetwork-remove-missing", "natnetwork", "remove", "--netname", "no-such-net")
    rec("clonemedium", "clonemedium", "disk", rec.path("media", "base.qcow2"), rec.path("media", "base.vdi"),
        "--format", "VDI")
    rec("clonemedium-exists", "clonemedium", "disk", rec.path("media", "base.qcow2"), rec.path("media", "base.vdi"),
        "--format", "VDI")
    rec("resize-base", "modifymedium", "disk", rec.path("media", "base.vdi"), "--resize", "128")
    rec("immutable-base", "modifymedium", "disk", rec.path("media", "base.vdi"), "--type", "immutable")
    gateway_nics = ["--nic1", "natnetwork", "--nat-network1", "k8s-nat", "--nic-type1", "virtio",
                    "--macaddress1", "525400A1B2C3", "--nic2", "intnet", "--intnet2", "k8s-internal",
                    "--nic-type2", "virtio", "--macaddress2", "525400D4E5F6"]
    lab_node(rec, "k8s-gateway", "gateway", gateway_nics,
             rec.path("media", "k8s-gateway.vdi"), rec.path("media", "gateway-seed.iso"))
    rec("modifyvm-bridged-missing", "modifyvm", "k8s-gateway", "--nic3", "bridged", "--bridgeadapter3", "nosuchbr0",
        "--nic-type3", "virtio", "--macaddress3", "525400010203")
    rec(None, "modifyvm", "k8s-gateway", "--description", 'a "quoted" word, a back\\slash\nand a second line')
    rec(None, "setextradata", "k8s-gateway", "labctl/note", "two\nlines")
    worker_nics = ["--nic1", "intnet", "--intnet1", "k8s-internal", "--nic-type1", "virtio", "--macaddress1",
                   "525400070809"]
    lab_node(rec, "k8s-worker1", "worker", worker_nics,
             rec.path("media", "k8s-worker1.vdi"), rec.path("media", "worker1-seed.iso"))
    record_queries(rec)
    record_failures(rec)
    record_removal(rec)


def record_queries(rec: Recorder) -> None:
    rec("showvminfo-gateway", "showvminfo", "k8s-gateway", "--machinereadable")
    rec("showvminfo-worker", "showvminfo", "k8s-worker1", "--machinereadable")
    rec("getextradata-enumerate", "getextradata", "k8s-gateway", "enumerate")
    rec("getextradata-value", "getextradata", "k8s-gateway", "labctl/role")
    rec("getextradata-missing", "getextradata", "k8s-gateway", "labctl/nothing")
    rec("createvm-same-name-elsewhere", "createvm", "--name", "k8s-worker1", "--basefolder", rec.path("other"),
        "--register")
    rec(None, "createvm", "--name", 'odd "name" {x}', "--basefolder", rec.path("other"), "--register")
    gone = rec(None, "createvm", "--name", "gone", "--basefolder", rec.path("gone"), "--register")[1]
    shutil.rmtree(rec.path("gone"))  # its settings file vanishes behind VirtualBox's back
    rec("list-vms-before-restart", "list", "vms")
    rec.harness.end_processes()  # a new VBoxSVC finds the settings file gone
    rec("list-vms", "list", "vms")
    gone_uuid = gone.split("UUID: ", 1)[1].split()[0]
    rec("showvminfo-inaccessible", "showvminfo", gone_uuid, "--machinereadable")
    rec("unregistervm-inaccessible-delete", "unregistervm", gone_uuid, "--delete")
    rec("unregistervm-inaccessible", "unregistervm", gone_uuid)
    rec("list-vms-after-unregister-inaccessible", "list", "vms")
    rec("list-hdds", "list", "hdds")
    rec("list-dvds", "list", "dvds")
    rec("list-intnets", "list", "intnets")
    rec("list-bridgedifs", "list", "bridgedifs")
    rec("list-hostonlyifs", "list", "hostonlyifs")
    rec("showmediuminfo-base", "showmediuminfo", "disk", rec.path("media", "base.vdi"))
    rec("showmediuminfo-diff", "showmediuminfo", "disk", rec.path("media", "k8s-gateway.vdi"))
    rec(None, "createmedium", "disk", "--filename", rec.path("media", "lost.vdi"), "--size", "8")
    Path(rec.path("media", "lost.vdi")).unlink()
    rec("showmediuminfo-inaccessible", "showmediuminfo", "disk", rec.path("media", "lost.vdi"))
    rec("list-hdds-inaccessible", "list", "hdds")
    rec(None, "closemedium", "disk", rec.path("media", "lost.vdi"))


def record_failures(rec: Recorder) -> None:
    rec("showvminfo-missing", "showvminfo", "no-such-vm", "--machinereadable")
    rec("createvm-exists", "createvm", "--name", "k8s-gateway", "--basefolder", rec.path("vms"), "--groups",
        "/labctl/k8s", "--register")
    rec("startvm", "startvm", "k8s-gateway", "--type", "headless")
    rec("hostonlyif-create", "hostonlyif", "create")
    rec("closemedium-base-with-children", "closemedium", "disk", rec.path("media", "base.vdi"), "--delete")
    rec("closemedium-attached", "closemedium", "disk", rec.path("media", "k8s-gateway.vdi"))
    rec("modifymedium-type-of-diff", "modifymedium", "disk", rec.path("media", "k8s-gateway.vdi"), "--type",
        "immutable")
    rec("modifyvm-bad-mac", "modifyvm", "k8s-gateway", "--macaddress1", "zz")
    rec("storageattach-no-controller", "storageattach", "k8s-gateway", "--storagectl", "nope", "--port", "0",
        "--device", "0", "--type", "hdd", "--medium", "emptydrive")
    rec("controlvm-not-running", "controlvm", "k8s-gateway", "poweroff")
    rec("unregistervm-usage", "unregistervm")
    rec("unknown-subcommand", "frobnicate")


def record_removal(rec: Recorder) -> None:
    rec("unregistervm-delete", "unregistervm", "k8s-worker1", "--delete")
    rec("list-hdds-after-unregister", "list", "hdds")


def main(argv: Sequence[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    with VBoxHarness(ensure_chroot()) as harness:
        rec = Recorder(harness)
        record(rec)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec.cases, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(rec.cases)} cases written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
