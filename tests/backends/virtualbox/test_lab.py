"""`labctl up`, `status` and `destroy` on VirtualBox, through the CLI and the real VBoxManage (the harness
of tests/harness/vbox.py). The lab is small (gateway, lb1, master1) and its internal network an `intnet`:
without VirtualBox's kernel driver no host-only interface can be made here, and no VM can start, so the
start step fails, in one line naming the node. Everything before it is real: VMs, NICs, disks, seeds,
the NAT network, tags, as VirtualBox reads them back.

Also: a second `up` changes nothing; `destroy` removes the lab's objects only; `up` killed (SIGKILL) at a
step boundary, or VBoxManage killed in the middle of any command that changes something, then run again,
converges to the state of an uninterrupted run; the missing host-only interface and a host without VT-x
are refused in one line saying what to do."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl.backends.base import BaseImage, NodeRequest
from labctl.backends.virtualbox.backend import VirtualBoxBackend
from labctl.backends.virtualbox.definition import RUNNING, TAG_KEY, base_key, node_files, read_tag
from labctl.backends.virtualbox.media import find_base
from labctl.backends.virtualbox.output import Nic
from labctl.backends.virtualbox.vboxmanage import VBoxManage, subcommand_of
from labctl.errors import BackendError
from labctl.guest.seed import build_seed_iso
from labctl.lab.accel import KVM, Accel
from labctl.lab.config import load_lab, parse_lab
from labctl.lab.identity import network_tag, node_tag
from labctl.lab.plan import Plan, plan_lab
from labctl.lab.state import LabState
from labctl.ops.events import QuietEvents
from labctl.ops.lifecycle import destroy
from tests.labenv import blank_image, cni_file, interrupt_after_step, labctl, record_figure, same_data, written_image

pytestmark = pytest.mark.slow

LAB = "vbl"
LAB_YAML = """\
name: {name}
backend: virtualbox
accel: {accel}
image: {{path: {image}, sha256: {sha256}}}
kubernetes: {{enforce_minimums: false, cni_manifest: {{path: {manifest}, sha256: {manifest_sha256}}}}}
networks: {{nat: {{cidr: 10.232.{subnet}.0/24}}, internal: {{cidr: 10.232.{next}.0/24, mode: {mode}}}}}
nodes:
  gateway: {{memory: 512}}
  lb: {{memory: 512}}
  master: {{count: 1, cpus: 1, memory: 512}}
  worker: {{count: 0}}
"""
STEP_LINE = re.compile(r"^(base image |network |node |start )")
# What changes VirtualBox's state: where a killed VBoxManage can leave something half done.
CHANGING = {"createvm", "registervm", "setextradata", "modifyvm", "storagectl", "storageattach", "createmedium",
            "modifymedium", "clonemedium", "convertfromraw", "closemedium", "natnetwork add", "natnetwork modify",
            "natnetwork remove", "hostonlyif create", "hostonlyif ipconfig", "unregistervm"}


@dataclass
class Lab:
    env: dict[str, str]
    config: Path
    root: Path  # LABCTL_VBOX_DIR
    work: Path

    @property
    def plan(self) -> Plan:
        return plan_lab(load_lab(self.config))


def write_config(work: Path, name: str = LAB, accel: str = "kvm", mode: str = "intnet", subnet: int = 2) -> Path:
    image, digest = blank_image(work)
    manifest, manifest_sha256 = cni_file(work)
    config = work / f"{name}-{mode}-{accel}.yaml"
    config.write_text(LAB_YAML.format(name=name, accel=accel, image=image, sha256=digest, mode=mode, subnet=subnet,
                                      next=subnet + 1, manifest=manifest, manifest_sha256=manifest_sha256))
    return config


@pytest.fixture(scope="module")
def lab(vbox) -> Lab:
    """accel: kvm (VirtualBox reports no VT-x here; `auto` would refuse, see the last test)."""
    work = vbox.work / "lab"
    work.mkdir()
    config = write_config(work)
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(work / "data"),
        "XDG_CACHE_HOME": str(work / "cache"),
        "LABCTL_CONFIG": str(config),
        "LABCTL_VBOXMANAGE": str(vbox.wrapper),
        "LABCTL_VBOX_DIR": str(work / "vms"),
    }
    return Lab(env, config, work / "vms", work)


def manage(vbox) -> VBoxManage:
    return VBoxManage(vbox.run)


def steps(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if STEP_LINE.match(line)]


def the_start_failure(result: subprocess.CompletedProcess[str]) -> str:
    """`up` here fails when it starts the first node: one error line, naming the node and the driver."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("labctl: error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


# --- what VirtualBox holds, compared ---------------------------------------------------------------


def snapshot(vbox, root: Path) -> dict:
    """Every VM (by name, with what the plan sets), NAT network, medium, global extradata and file of the
    lab's folder, as VirtualBox and the file system have them."""
    vm = manage(vbox)
    vms = {}
    for entry in vm.list_vms():
        info = vm.show_vm_info(entry.uuid)
        vms[f"{info.name} {entry.uuid}"] = {
            # Not running: "poweroff", or "aborted" where a VBoxManage holding its session was killed.
            "memory": info.memory, "cpus": info.cpus, "groups": info.groups, "running": info.state in RUNNING,
            "nics": [nic.__dict__ for nic in info.nics()], "uart": info.uart(), "controllers": info.controllers(),
            "attachments": [(a.controller, a.port, a.device, a.medium) for a in info.attachments()],
            "extradata": vm.extradata(entry.uuid),
        }
    return {
        "vms": vms,
        "natnetworks": vm.list_natnetworks(),
        "hdds": sorted((r["Location"], r["Type"], r.get("Capacity")) for r in vm.list_hdds()),
        "dvds": sorted(r["Location"] for r in vm.list_dvds()),
        "global": vm.extradata("global"),
        "files": sorted(str(path.relative_to(root)) for path in root.rglob("*") if _ours(path)),
    }


def _ours(path: Path) -> bool:
    """labctl's files (disks, seeds, console logs); VirtualBox's own (settings and their backups, logs) vary
    with how often it saved them."""
    return path.suffix in (".vdi", ".iso") or path.name == "console.log"


def normalized(snap: dict) -> dict:
    """A snapshot with the lab ids (new for each lab instance) and the tags' ids replaced."""
    text = json.dumps(snap, sort_keys=True)
    ids = set(re.findall(r'lab-id\\\\?":\\\\?"([0-9a-f]{12})', text))
    for lab_id in ids:
        text = text.replace(lab_id, "LABID")
    return json.loads(text)


def of_lab(snap: dict, lab: str = LAB) -> dict:
    """Only what belongs to ``lab`` (by name): other tests' objects share the harness's VirtualBox."""
    return {
        "vms": {name: vm for name, vm in snap["vms"].items() if name.startswith(f"{lab}-")},
        "natnetworks": [n for n in snap["natnetworks"] if n["Name"].startswith(f"{lab}-")],
        "hdds": [h for h in snap["hdds"] if f"/{lab}-" in h[0]],
        "dvds": [d for d in snap["dvds"] if f"/{lab}-" in d],
        "global": {k: v for k, v in snap["global"].items() if k.startswith(f"labctl/network/{lab}-")},
        "files": [f for f in snap["files"] if f.startswith(f"labctl/{lab}")],
    }


# --- the lab, defined as planned -------------------------------------------------------------------


def check_vms_match_the_plan(vbox, lab: Lab) -> None:
    vm, plan = manage(vbox), lab.plan
    hdds = {record["UUID"]: record for record in vm.list_hdds()}
    natnets = {record["Name"]: record for record in vm.list_natnetworks()}
    nat = plan.network("nat")
    assert (natnets[nat.name]["Network"], natnets[nat.name]["Gateway"], natnets[nat.name]["DHCP Server"]) == (
        str(nat.cidr), str(nat.host_address.ip), "No")
    bases = set()
    for node in plan.nodes:
        info = vm.show_vm_info(node.uuid)
        tag = read_tag(vm.get_extradata(node.uuid, TAG_KEY))
        assert tag is not None and (tag.lab, tag.role, tag.node, tag.kind) == (LAB, node.role, node.name, "domain")
        files = node_files(lab.root, LAB, node, tag.lab_id)
        assert (info.name, info.state, info.groups) == (node.domain_name, "poweroff", (f"/labctl/{LAB}",))
        assert (info.memory, info.cpus) == (node.memory, node.cpus)
        expected_nics = [Nic(slot, "natnetwork" if nic.network == "nat" else "intnet",
                             f"{LAB}-{nic.network}", "virtio", nic.mac) for slot, nic in enumerate(node.nics, 1)]
        assert info.nics() == expected_nics
        assert info.uart() == ("0x03f8,4", f"file,{files.console}")
        assert info.controllers() == {"virtio": "VirtioSCSI"}
        disk, seed = info.attachments()
        assert (disk.port, disk.medium, seed.port, seed.medium) == (0, str(files.disk), 1, str(files.seed))
        record = hdds[disk.uuid]
        assert record["Type"] == "normal (differencing)" and record["Capacity"] == f"{node.disk * 1024} MBytes"
        assert vm.show_medium_info(disk.uuid)["Auto-Reset"] == "off"
        bases.add(record["Parent UUID"])
        assert seed.medium in {record["Location"] for record in vm.list_dvds()}
    (base_uuid,) = bases  # one shared base
    assert hdds[base_uuid]["Type"] == "immutable"


@dataclass
class Built:
    result: subprocess.CompletedProcess[str]
    seconds: float
    reference: dict  # the lab's objects, normalized: what an interrupted `up` run again must reach


@pytest.fixture(scope="module")
def built(vbox, lab) -> Built:
    """The lab as `up --no-wait` leaves it here: defined, its first start refused."""
    started = time.monotonic()
    result = labctl(lab.env, "up", "--no-wait")
    return Built(result, time.monotonic() - started, normalized(of_lab(snapshot(vbox, lab.root))))


def test_up_defines_the_plan_then_the_start_fails_in_one_line_naming_the_node(vbox, lab, built):
    first = built.result
    line = the_start_failure(first)
    assert line.startswith("labctl: error: starting node gateway: VBoxManage startvm: The virtual machine "
                           f"'{LAB}-gateway' has terminated unexpectedly during startup")
    assert "/dev/vboxdrv is missing" in line and "sudo /sbin/vboxconfig" in line
    done = steps(first.stderr)
    assert done[0].startswith("base image ") and done[0].endswith(": imported")
    assert done[1:] == [f"network {LAB}-nat: created", f"network {LAB}-internal: created", "node gateway: created",
                        "node lb1: created", "node master1: created"]
    check_vms_match_the_plan(vbox, lab)
    before = snapshot(vbox, lab.root)

    again = labctl(lab.env, "up", "--no-wait")
    assert the_start_failure(again) == line
    assert [step.rsplit(": ", 1)[1] for step in steps(again.stderr)] == ["exists"] * 6
    assert snapshot(vbox, lab.root) == before, "a second up changed something"

    status = labctl(lab.env, "status", "--output", "json")
    assert status.returncode == 0, status.stderr
    assert {row["name"]: row["state"] for row in json.loads(status.stdout)} == dict.fromkeys(
        ("gateway", "lb1", "master1"), "shut off")
    record_figure("virtualbox.up", {"nodes": 3, "defined_as_planned": True, "second_up_changes": 0,
                                    "seconds": round(built.seconds, 1)})


def test_destroy_removes_the_labs_objects_only(vbox, lab, built):
    vm = manage(vbox)
    plan = lab.plan
    others = lab.work / "others"
    foreign_vm = vm.create_vm(f"{LAB}-gateway", others)  # the lab's name, not its tag
    vm.natnetwork_add(f"{LAB}-foreign-nat", "10.232.99.0/24")
    foreign_disk = others / f"{LAB}-gateway-ffffffffffff.vdi"  # named like the lab's, another lab id
    vm.create_medium(foreign_disk, 8)
    base = {record["Location"] for record in vm.list_hdds() if record["Type"] == "immutable"}
    lab_files = lab.root / "labctl" / LAB

    result = labctl(lab.env, "destroy", "--yes")
    assert result.returncode == 0, result.stderr
    removed = [line.removeprefix("removed ") for line in result.stderr.splitlines() if line.startswith("removed ")]
    assert sorted(line.split(" ")[0] for line in removed) == ["domain"] * 3 + ["network"] * 2 + ["volume"] * 6
    left = snapshot(vbox, lab.root)
    assert of_lab(left)["vms"] == {f"{LAB}-gateway {foreign_vm}": left["vms"][f"{LAB}-gateway {foreign_vm}"]}
    assert [n["Name"] for n in of_lab(left)["natnetworks"]] == [f"{LAB}-foreign-nat"]
    assert {h[0] for h in left["hdds"]} >= base | {str(foreign_disk)}
    assert not [h for h in of_lab(left)["hdds"] if h[0] != str(foreign_disk)] and not of_lab(left)["dvds"]
    assert of_lab(left)["global"] == {} and of_lab(left)["files"] == [] and not lab_files.exists()
    assert any(key.startswith("labctl/base/") for key in left["global"]), "the base's marker stays"
    assert not any(node.uuid in {name.split()[1] for name in left["vms"]} for node in plan.nodes)
    record_figure("virtualbox.destroy_safety", {"foreign": 3, "foreign_survived": 3, "base_kept": True,
                                                "lab_objects_removed": len(removed), "lab_objects_left": 0})
    vm.unregister_vm(foreign_vm, delete=True)
    vm.natnetwork_remove(f"{LAB}-foreign-nat")
    vm.close_medium(str(foreign_disk), delete=True)


# --- interruptions -----------------------------------------------------------------------------------


def test_up_killed_at_a_step_boundary_then_rerun_converges(vbox, lab, built):
    """The CLI's way: `up` SIGKILLed between two nodes (after lb1's VM), then run again. (Kills in the
    middle of each VBoxManage command are the next test's.)"""
    assert labctl(lab.env, "destroy", "--yes").returncode == 0  # the lab of `built`, if still there
    converged = 0
    boundaries = (5,)
    for step in boundaries:
        killed = interrupt_after_step(lab.env, step)
        assert killed.landed, f"the SIGKILL after step {step} did not land: exit {killed.code}: {killed.stderr}"
        the_start_failure(labctl(lab.env, "up", "--no-wait"))
        assert normalized(of_lab(snapshot(vbox, lab.root))) == built.reference, f"after a kill at boundary {step}"
        converged += 1
        assert labctl(lab.env, "destroy", "--yes").returncode == 0
    record_figure("virtualbox.interrupt", {"boundaries": len(boundaries), "converged": converged})


class Killed(Exception):
    """labctl "died" right after a VBoxManage it ran was killed."""


class KillOnce:
    """Runs VBoxManage through the harness; at the ``at``-th command that changes something, starts it
    and SIGKILLs it ``delay`` seconds in (mid-command, or before it began), then raises :class:`Killed`."""

    def __init__(self, vbox, at: int, delay: float = 0.04) -> None:
        self.vbox, self.at, self.delay = vbox, at, delay
        self.changes = 0
        self.killed: list[str] | None = None

    def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        if subcommand_of(argv[1:]) in CHANGING:
            self.changes += 1
            if self.changes == self.at:
                # The harness's wrapper execs down to VBoxManage: this pid is VBoxManage's own.
                proc = subprocess.Popen([str(self.vbox.wrapper), *argv[1:]], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                time.sleep(self.delay)
                proc.kill()
                proc.wait(timeout=60)
                self.killed = list(argv[1:])
                raise Killed(" ".join(argv[1:3]))
        return self.vbox.run(argv)


def define(backend: VirtualBoxBackend, plan: Plan, image: BaseImage, lab_id: str, nodes: Sequence[str]) -> None:
    """What `up` applies, up to its start step, for ``nodes``."""
    backend.ensure_base_image(image)
    for net in plan.networks:
        backend.ensure_network(net, network_tag(plan.lab.name, lab_id))
    for name in nodes:
        node = plan.node(name)
        seed = build_seed_iso({"meta-data": f"instance-id: {node.uuid}\n".encode(), "user-data": b"#cloud-config\n"})
        backend.ensure_node(NodeRequest(node, node_tag(plan.lab.name, lab_id, node.role, node.name), seed,
                                        Accel(KVM, "test"), image))


def image_of(path: Path, fmt: str = "qcow2", pattern: int = 1) -> BaseImage:
    """A small image of its own (a digest of its own: a base of its own)."""
    written_image(path, fmt, pattern=pattern)
    return BaseImage(path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(), fmt)


def test_vboxmanage_killed_in_any_changing_command_then_rerun_converges(vbox, lab):
    """The gateway's VM on its networks (every kind of command node definition runs); then, separately, the
    base image import. A kill lands in each command that changes something, one run at a time."""
    work = lab.work / "killed"
    work.mkdir()
    plan = plan_lab(parse_lab(write_config(work, "vbk", subnet=20).read_text(), "t"))
    lab_id = "0000000000aa"
    image = image_of(work / "image.qcow2")
    backend = VirtualBoxBackend(VBoxManage(vbox.run), (7, 0, 0), root=work / "vms")
    state = LabState.for_lab("vbk", work / "state")
    backend.ensure_base_image(image)
    counter = KillOnce(vbox, at=0)
    define(VirtualBoxBackend(VBoxManage(counter), (7, 0, 0), root=work / "vms"), plan, image, lab_id, ["gateway"])
    reference = normalized(of_lab(snapshot(vbox, work / "vms"), "vbk"))
    destroy("vbk", backend, state, QuietEvents())
    landed = []
    for at in range(1, counter.changes + 1):
        killer = KillOnce(vbox, at)
        with pytest.raises(Killed):
            define(VirtualBoxBackend(VBoxManage(killer), (7, 0, 0), root=work / "vms"), plan, image, lab_id,
                   ["gateway"])
        time.sleep(0.5)  # the next `up` starts a moment later
        define(backend, plan, image, lab_id, ["gateway"])
        assert normalized(of_lab(snapshot(vbox, work / "vms"), "vbk")) == reference, f"after killing {killer.killed}"
        landed.append(" ".join((killer.killed or [])[:2]))
        destroy("vbk", backend, state, QuietEvents())
    imports = kill_the_base_import(vbox, backend, work)
    record_figure("virtualbox.vboxmanage_killed", {"node_commands_killed": len(landed), "converged": len(landed),
                                                   "base_import_commands_killed": imports})


def kill_the_base_import(vbox, backend: VirtualBoxBackend, work: Path) -> int:
    """Each command of a base import killed in turn (a new image each time): the rerun leaves one whole,
    immutable, marked base, its source image closed again."""
    vm = backend.manage
    counter = KillOnce(vbox, at=0)
    VirtualBoxBackend(VBoxManage(counter), (7, 0, 0), root=work / "vms").ensure_base_image(
        image_of(work / "counted.qcow2", pattern=2))
    for at in range(1, counter.changes + 1):
        image = image_of(work / f"killed-{at}.qcow2", pattern=2 + at)
        with pytest.raises(Killed):
            VirtualBoxBackend(VBoxManage(KillOnce(vbox, at)), (7, 0, 0), root=work / "vms").ensure_base_image(image)
        time.sleep(0.5)
        assert backend.ensure_base_image(image) in ("imported", "exists")
        base = find_base(vm, image)
        assert base is not None and base["Type"] == "immutable"
        assert not same_data(image.path, "qcow2", Path(base["Location"]), "vdi")
        stem = f"labctl-base-{base_key(image.digest)}-"
        assert [r["Location"] for r in vm.list_hdds() if stem in r["Location"]] == [base["Location"]]
        assert str(image.path) not in {r["Location"] for r in vm.list_hdds()}, "the source was left registered"
    return counter.changes


def test_a_raw_image_becomes_a_base_too(vbox, lab):
    work = lab.work / "raw"
    work.mkdir()
    image = image_of(work / "image.raw", "raw", pattern=7)
    backend = VirtualBoxBackend(VBoxManage(vbox.run), (7, 0, 0), root=work / "vms")
    assert backend.ensure_base_image(image) == "imported"
    assert backend.ensure_base_image(image) == "exists"
    base = find_base(backend.manage, image)
    assert base is not None and (base["Type"], base["Storage format"]) == ("immutable", "VDI")
    assert not same_data(image.path, "raw", Path(base["Location"]), "vdi")


# --- refusals ----------------------------------------------------------------------------------------


def test_a_missing_host_only_interface_and_a_host_without_vtx_are_one_line_refusals(vbox, lab):
    """Here /dev/vboxnetctl is missing (no host-only interface can be made) and VirtualBox reports no VT-x."""
    isolated = {**lab.env, "LABCTL_CONFIG": str(write_config(lab.work, "vbh", mode="isolated", subnet=30))}
    refused = labctl(isolated, "up", "--no-wait")
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("labctl: error: ")]
    assert refused.returncode == 1 and line.startswith("labctl: error: host not ready: host-only interface: ")
    assert "sudo modprobe vboxnetadp" in line and "VBoxManage hostonlyif create" in line
    assert "--ip 10.232.31.254 --netmask 255.255.255.0" in line and "mode: bridge or intnet" in line
    assert not of_lab(snapshot(vbox, lab.root), "vbh")["vms"]

    # Where doctor cannot tell (not Linux), making the network says the same.
    plan = plan_lab(load_lab(Path(isolated["LABCTL_CONFIG"])))
    backend = VirtualBoxBackend(VBoxManage(vbox.run), (7, 0, 0), root=lab.work / "vms")
    with pytest.raises(BackendError) as caught:
        backend.ensure_network(plan.network("internal"), network_tag("vbh", "0000000000bb"))
    message = str(caught.value)
    assert message.startswith("cannot create a host-only interface for network vbh-internal: VBoxManage hostonlyif "
                              "create: Failed to create the host-only adapter") and "\n" not in message
    assert "sudo modprobe vboxnetadp" in message
    destroy("vbh", backend, LabState.for_lab("vbh", lab.work / "state-vbh"), QuietEvents())
    assert not of_lab(snapshot(vbox, lab.root), "vbh")["global"]

    auto = {**lab.env, "LABCTL_CONFIG": str(write_config(lab.work, "vba", accel="auto", subnet=40))}
    hardware = manage(vbox).host_info().get("Processor supports HW virtualization")
    result = labctl(auto, "up", "--no-wait")
    if hardware == "yes":  # a host with VT-x: `auto` goes ahead (to the start step, without the driver)
        assert steps(result.stderr)
        assert labctl(auto, "destroy", "--yes").returncode == 0
        return
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("labctl: error: ")]
    assert result.returncode == 1 and line.startswith(
        "labctl: error: accel: the hypervisor reports no hardware virtualization (VT-x/AMD-V)")
    assert "set accel: kvm" in line and not steps(result.stderr)
