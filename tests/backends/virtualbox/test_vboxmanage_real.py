"""The command layer against the real VBoxManage (VirtualBox 7 from Debian sid, through the harness):
a VM configured like the default lab's gateway and read back, a NAT network, a base VDI converted
from a qcow2 with a differencing disk on it, the startvm failure as one line, and a cleanup of our
VMs that leaves a foreign one alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.backends.virtualbox.output import Attachment, Nic
from labctl.backends.virtualbox.vboxmanage import VBoxManage, VBoxManageError, mac_to_vbox
from labctl.lab.config import parse_lab
from labctl.lab.plan import NodePlan, Plan, plan_lab
from tests.labenv import same_data, written_image

pytestmark = pytest.mark.slow

LAB_TAG = "labctl/lab"


@pytest.fixture(scope="module")
def manage(vbox) -> VBoxManage:
    return VBoxManage(vbox.run)


@pytest.fixture
def folder(vbox, request) -> Path:
    """A directory of this test's own inside the harness's work directory (same path in the chroot)."""
    path = vbox.work / request.node.name
    path.mkdir()
    return path


def make_qcow2(path: Path) -> Path:
    """A qcow2 with data in it (VirtualBox refuses one never written to: no L1 table yet)."""
    return written_image(path, pattern=0xAB, length="1M")


def make_base(manage: VBoxManage, folder: Path) -> Path:
    base = folder / "base.vdi"
    manage.clone_medium(str(make_qcow2(folder / "base.qcow2")), base)
    manage.set_medium_type(str(base), "immutable")  # survives unregistervm --delete of the VMs on it
    return base


def make_node(manage: VBoxManage, folder: Path, node: NodePlan, plan: Plan, base: Path) -> str:
    """A VM like a lab node: the node's size, NICs and MACs, a serial log, virtio-scsi disk and seed."""
    uuid = manage.create_vm(node.domain_name, folder / "vms", groups=[f"/labctl/{plan.lab.name}"],
                            ostype="Debian_64", uuid=node.uuid)
    nic_options = []
    for slot, nic in enumerate(node.nics, start=1):
        network = plan.network(nic.network).name
        kind, network_option = ("natnetwork", "--nat-network") if nic.network == "nat" else ("intnet", "--intnet")
        nic_options += [f"--nic{slot}", kind, f"{network_option}{slot}", network, f"--nic-type{slot}", "virtio",
                        f"--macaddress{slot}", mac_to_vbox(nic.mac)]
    manage.modify_vm(uuid, "--memory", str(node.memory), "--cpus", str(node.cpus), "--boot1", "disk",
                     "--boot2", "dvd", "--boot3", "none", "--boot4", "none", *nic_options,
                     "--uart1", "0x3F8", "4", "--uartmode1", "file", str(folder / f"{node.name}.log"))
    manage.storage_ctl(uuid, "virtio", bus="virtio-scsi", controller="VirtIO", port_count=2, bootable=True)
    disk = folder / f"{node.domain_name}.vdi"
    manage.create_diff_medium(str(base), disk)
    manage.set_medium_autoreset(str(disk), False)  # a child of an immutable base is made auto-reset
    manage.storage_attach(uuid, "virtio", 0, 0, kind="hdd", medium=str(disk))
    seed = folder / f"{node.name}-seed.iso"
    seed.write_bytes(_iso())
    manage.storage_attach(uuid, "virtio", 1, 0, kind="dvddrive", medium=str(seed))
    manage.set_extradata(uuid, LAB_TAG, plan.lab.name)
    manage.set_extradata(uuid, "labctl/role", node.role)
    return uuid


def _iso() -> bytes:
    from labctl.guest.seed import build_seed_iso

    return build_seed_iso({"meta-data": b"instance-id: test\n", "user-data": b"#cloud-config\n"})


def test_version_is_accepted(manage):
    assert manage.check_version() >= (7, 0, 0)


def test_a_lab_node_reads_back_as_configured(manage, folder, plan):
    gateway = plan.node("gateway")
    base = make_base(manage, folder)
    uuid = make_node(manage, folder, gateway, plan, base)
    info = manage.show_vm_info(uuid)
    assert (info.name, info.uuid, info.state) == (gateway.domain_name, gateway.uuid, "poweroff")
    assert info.groups == (f"/labctl/{plan.lab.name}",)
    assert (info.memory, info.cpus) == (gateway.memory, gateway.cpus)
    assert [info[f"boot{i}"] for i in range(1, 5)] == ["disk", "dvd", "none", "none"]
    assert info.nics() == [
        Nic(1, "natnetwork", plan.network("nat").name, "virtio", gateway.nics[0].mac),
        Nic(2, "intnet", plan.network("internal").name, "virtio", gateway.nics[1].mac),
    ]
    assert info.uart() == ("0x03f8,4", f"file,{folder / 'gateway.log'}")
    assert info.controllers() == {"virtio": "VirtioSCSI"}
    disk = folder / f"{gateway.domain_name}.vdi"
    disk_record = manage.show_medium_info(str(disk))
    assert info.attachments() == [
        Attachment("virtio", 0, 0, str(disk), disk_record["UUID"]),
        Attachment("virtio", 1, 0, str(folder / "gateway-seed.iso"), info["virtio-ImageUUID-1-0"]),
    ]
    assert disk_record["Auto-Reset"] == "off"
    assert manage.extradata(uuid) == {LAB_TAG: plan.lab.name, "labctl/role": "gateway"}
    assert manage.get_extradata(uuid, "labctl/role") == "gateway"
    assert manage.get_extradata(uuid, "labctl/nothing") is None
    assert any(entry.uuid == uuid for entry in manage.list_vms())


def test_natnetwork_created_listed_removed(manage):
    manage.natnetwork_add("lt-nat", "10.213.99.0/24")
    listed = {record["Name"]: record for record in manage.list_natnetworks()}
    assert listed["lt-nat"]["Network"] == "10.213.99.0/24"
    assert listed["lt-nat"]["Gateway"] == "10.213.99.1"
    assert listed["lt-nat"]["DHCP Server"] == "No"
    with pytest.raises(VBoxManageError, match=r"^VBoxManage natnetwork add: NATNetwork server already exists$"):
        manage.natnetwork_add("lt-nat", "10.213.99.0/24")
    manage.natnetwork_remove("lt-nat")
    assert "lt-nat" not in {record["Name"] for record in manage.list_natnetworks()}


def test_qcow2_to_vdi_with_a_differencing_disk_attached(manage, folder, vbox):
    source = make_qcow2(folder / "image.qcow2")
    base = folder / "image.vdi"
    base_uuid = manage.clone_medium(str(source), base)
    manage.resize_medium(str(base), 128)
    child = folder / "child.vdi"
    child_uuid = manage.create_diff_medium(base_uuid, child)
    manage.create_vm("lt-disk", folder / "vms", uuid=None)
    manage.storage_ctl("lt-disk", "virtio", bus="virtio-scsi", controller="VirtIO")
    manage.storage_attach("lt-disk", "virtio", 0, 0, kind="hdd", medium=str(child))
    assert not same_data(source, "qcow2", base, "vdi")  # the data came across (the tail is zeros)
    hdds = {record["UUID"]: record for record in manage.list_hdds()}
    assert (hdds[base_uuid]["Type"], hdds[base_uuid]["Capacity"]) == ("normal (base)", "128 MBytes")
    assert (hdds[child_uuid]["Parent UUID"], hdds[child_uuid]["Type"]) == (base_uuid, "normal (differencing)")
    assert [a.uuid for a in manage.show_vm_info("lt-disk").attachments()] == [child_uuid]
    with pytest.raises(VBoxManageError) as caught:
        manage.close_medium(base_uuid, delete=True)
    assert caught.value.code == "VBOX_E_OBJECT_IN_USE" and base.exists()


def test_startvm_failure_is_one_line_naming_the_command(manage, folder):
    manage.create_vm("lt-start", folder / "vms")
    with pytest.raises(VBoxManageError) as caught:
        manage.start_vm("lt-start")  # no kernel driver here
    message = str(caught.value)
    assert "\n" not in message
    assert message == ("VBoxManage startvm: The virtual machine 'lt-start' has terminated unexpectedly during "
                       "startup with exit code 1 (0x1)")


def test_a_foreign_vm_survives_the_cleanup_of_ours(manage, folder):
    plan = plan_lab(parse_lab("name: ltclean", "test"))  # a lab of this test's own in the shared VirtualBox
    base = make_base(manage, folder)
    ours = [make_node(manage, folder, plan.node(name), plan, base) for name in ("lb1", "master1")]
    foreign = manage.create_vm(f"{plan.lab.name}-foreign", folder / "vms")  # named like ours, untagged
    foreign_disk = folder / "foreign.vdi"
    manage.create_diff_medium(str(base), foreign_disk)
    manage.storage_ctl(foreign, "sata", bus="sata")
    manage.storage_attach(foreign, "sata", 0, 0, kind="hdd", medium=str(foreign_disk))

    removed = remove_lab_vms(manage, plan.lab.name)

    assert sorted(removed) == sorted(ours)
    left = {entry.uuid for entry in manage.list_vms()}
    assert foreign in left and not left & set(ours)
    assert foreign_disk.exists() and base.exists()
    assert not (folder / f"{plan.node('lb1').domain_name}.vdi").exists()


def remove_lab_vms(manage: VBoxManage, lab: str) -> list[str]:
    """What a backend's destroy will do: only VMs tagged with the lab, by UUID."""
    removed = []
    for entry in manage.list_vms():
        if entry.accessible and manage.get_extradata(entry.uuid, LAB_TAG) == lab:
            manage.unregister_vm(entry.uuid, delete=True)
            removed.append(entry.uuid)
    return removed


def test_unregistervm_delete_takes_a_normal_base_with_its_last_child(manage, folder):
    """Why the backend keeps its shared base immutable: a normal one goes with the last VM on it."""
    base = folder / "normal-base.vdi"
    manage.clone_medium(str(make_qcow2(folder / "normal-base.qcow2")), base)
    for name in ("lt-first", "lt-last"):
        manage.create_vm(name, folder / "vms")
        manage.storage_ctl(name, "virtio", bus="virtio-scsi", controller="VirtIO")
        manage.create_diff_medium(str(base), folder / f"{name}.vdi")
        manage.storage_attach(name, "virtio", 0, 0, kind="hdd", medium=str(folder / f"{name}.vdi"))
    manage.unregister_vm("lt-first", delete=True)
    assert base.exists(), "another VM's disk still derives from it"
    manage.unregister_vm("lt-last", delete=True)
    assert not base.exists() and not (folder / "lt-last.vdi").exists()
