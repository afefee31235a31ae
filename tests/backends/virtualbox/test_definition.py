"""What the plan is in VirtualBox terms, without VBoxManage: file layout, tags as extradata, the argument
lists of a node and its networks, and what `render` shows."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from labctl.backends.base import BaseImage
from labctl.backends.virtualbox.definition import (
    HOSTONLY_PLACEHOLDER,
    NetworkRecord,
    NicTarget,
    base_key,
    createvm_args,
    is_labs_vm,
    modifyvm_args,
    network_commands,
    network_key,
    network_records,
    network_value,
    nic_target,
    node_commands,
    node_files,
    read_tag,
    render_commands,
    settings_file,
    tag_value,
)
from labctl.backends.virtualbox.inventory import possible_nodes
from labctl.backends.virtualbox.media import capacity_mb, ensure_base
from labctl.backends.virtualbox.vboxmanage import VBoxManage
from labctl.errors import BackendError
from labctl.lab.config import parse_lab
from labctl.lab.identity import network_tag, node_tag
from labctl.lab.plan import plan_lab

ROOT = Path("/vb")
LAB_ID = "0123456789ab"


@pytest.fixture(scope="module")
def vbox_plan():
    """The default lab on VirtualBox, its internal network a host-only interface (mode isolated)."""
    return plan_lab(parse_lab("backend: virtualbox", "t"))


def test_a_nodes_files_live_in_its_vm_folder_named_with_the_lab_id(vbox_plan):
    files = node_files(ROOT, "k8s", vbox_plan.node("master1"), LAB_ID)
    folder = ROOT / "labctl/k8s/k8s-master1"
    assert files.folder == folder and files.settings == folder / "k8s-master1.vbox"
    assert (files.disk.name, files.seed.name, files.console.name) == (
        "k8s-master1-0123456789ab.vdi", "k8s-master1-0123456789ab-seed.iso", "console.log")
    assert settings_file(ROOT, "k8s", vbox_plan.node("master1")) == files.settings
    assert base_key("sha512:" + "ab" * 64) == "sha512-" + "ab" * 12


def test_the_gateway_vm_arguments(vbox_plan):
    gateway = vbox_plan.node("gateway")
    targets = {"nat": nic_target(vbox_plan.network("nat")), "internal": NicTarget("hostonly", "vboxnet3")}
    args = modifyvm_args(gateway, targets, Path("/vb/console.log"))
    assert args[:2] == ["modifyvm", gateway.uuid]
    options = dict(zip(args[2::2], args[3::2], strict=False))
    assert (options["--memory"], options["--cpus"]) == ("512", "1")
    assert [options[f"--boot{i}"] for i in range(1, 5)] == ["disk", "dvd", "none", "none"]
    nat_mac = gateway.nics[0].mac.replace(":", "").upper()
    internal_mac = gateway.nics[1].mac.replace(":", "").upper()
    assert args[-20:] == [
        "--nic1", "natnetwork", "--nat-network1", "k8s-nat", "--nic-type1", "virtio", "--macaddress1", nat_mac,
        "--cable-connected1", "on",
        "--nic2", "hostonly", "--host-only-adapter2", "vboxnet3", "--nic-type2", "virtio",
        "--macaddress2", internal_mac, "--cable-connected2", "on",
    ]
    assert args[args.index("--uart1"):args.index("--uart1") + 6] == ["--uart1", "0x3F8", "4", "--uartmode1", "file",
                                                                      "/vb/console.log"]
    assert createvm_args(ROOT, "k8s", gateway) == [
        "createvm", "--name", "k8s-gateway", "--basefolder", "/vb", "--register", "--uuid", gateway.uuid,
        "--groups", "/labctl/k8s", "--ostype", "Debian_64"]


@pytest.mark.parametrize(("yaml", "kind", "network"), [
    ("", "hostonly", HOSTONLY_PLACEHOLDER),
    ("networks: {internal: {mode: intnet}}", "intnet", "k8s-internal"),
    ("networks: {internal: {mode: bridge, bridge: 'Intel(R) Ethernet I219-V'}}", "bridged", "Intel(R) Ethernet I219-V"),
])
def test_each_internal_mode_attaches_the_nic_to_its_network(yaml, kind, network):
    plan = plan_lab(parse_lab(f"backend: virtualbox\n{yaml}", "t"))
    assert nic_target(plan.network("internal")) == NicTarget(kind, network)
    assert nic_target(plan.network("nat")) == NicTarget("natnetwork", "k8s-nat")


def test_a_node_is_defined_by_these_commands_in_this_order(vbox_plan):
    worker = vbox_plan.node("worker2")
    tag = node_tag("k8s", LAB_ID, worker.role, worker.name)
    targets = {"internal": NicTarget("intnet", "k8s-internal")}
    commands = node_commands(ROOT, "k8s", worker, tag, targets, "/vb/labctl-base/base.vdi")
    assert [command[0] for command in commands] == [
        "createvm", "setextradata", "modifyvm", "storagectl", "createmedium", "modifymedium", "modifymedium",
        "storageattach", "storageattach", "setextradata"]
    files = node_files(ROOT, "k8s", worker, LAB_ID)
    assert commands[4] == ["createmedium", "disk", "--filename", str(files.disk), "--diffparent",
                           "/vb/labctl-base/base.vdi", "--format", "VDI"]
    assert commands[6][-2:] == ["--resize", str(20 * 1024)]  # the node's own size: the base's does not reach it
    assert commands[7][-4:] == ["--type", "hdd", "--medium", str(files.disk)]
    assert commands[8][-4:] == ["--type", "dvddrive", "--medium", str(files.seed)]
    assert commands[3] == ["storagectl", worker.uuid, "--name", "virtio", "--add", "virtio-scsi", "--controller",
                           "VirtIO", "--portcount", "2", "--bootable", "on"]
    text = render_commands("worker2", commands)
    assert text.splitlines()[0] == "# worker2"
    assert [shlex.split(line)[1:] for line in text.splitlines()[1:]] == commands


def test_network_commands_record_the_network_first(vbox_plan):
    tag = network_tag("k8s", LAB_ID)
    nat = network_commands(vbox_plan.network("nat"), tag)
    assert nat[0][:3] == ["setextradata", "global", "labctl/network/k8s-nat"]
    assert nat[1] == ["natnetwork", "add", "--netname", "k8s-nat", "--network", str(vbox_plan.network("nat").cidr),
                      "--enable", "--dhcp", "off"]
    internal = network_commands(vbox_plan.network("internal"), tag)
    assert internal[1] == ["hostonlyif", "create"]
    address = vbox_plan.network("internal").host_address
    assert internal[2] == ["hostonlyif", "ipconfig", "vboxnetN", "--ip", str(address.ip), "--netmask",
                           "255.255.255.0"]
    intnet = plan_lab(parse_lab("backend: virtualbox\nnetworks: {internal: {mode: intnet}}", "t"))
    assert [command[0] for command in network_commands(intnet.network("internal"), tag)] == ["setextradata"]


def test_tags_are_one_json_value_and_anything_else_is_no_tag():
    tag = node_tag("k8s", LAB_ID, "master", "master1")
    assert read_tag(tag_value(tag)) == tag
    assert json.loads(tag_value(tag))["lab-id"] == LAB_ID
    for value in (None, "", "k8s", "[]", '{"lab": "k8s"}', '{"lab": "", "lab-id": "x"}', "{not json"):
        assert read_tag(value) is None


def test_network_records_round_trip_and_ignore_other_extradata(vbox_plan):
    tag = network_tag("k8s", LAB_ID)
    internal = vbox_plan.network("internal")
    values = {
        network_key("k8s-internal"): network_value(internal, tag, device="vboxnet1", owned=False),
        network_key("k8s-nat"): network_value(vbox_plan.network("nat"), tag),
        "labctl/base/sha256-abc": "some-uuid",
        "GUI/LastWindowPosition": "1,2,3,4",
        network_key("broken"): "{",
    }
    assert network_records(values) == {
        "k8s-internal": NetworkRecord("k8s-internal", tag, "isolated", "vboxnet1", False),
        "k8s-nat": NetworkRecord("k8s-nat", tag, "nat", "", True),
    }


def test_a_vm_under_the_plans_uuid_is_the_labs_when_tagged_so_or_where_its_createvm_writes(vbox_plan):
    settings = settings_file(ROOT, "k8s", vbox_plan.node("lb1"))
    assert is_labs_vm(node_tag("k8s", "x", "lb", "lb1"), "k8s", "/elsewhere/a.vbox", settings)
    assert not is_labs_vm(node_tag("other", "x", "lb", "lb1"), "k8s", str(settings), settings)
    assert is_labs_vm(None, "k8s", str(settings), settings)  # createvm interrupted before its tag
    assert not is_labs_vm(None, "k8s", "/elsewhere/a.vbox", settings)


def test_inaccessible_vms_are_known_by_the_uuids_the_plan_derives(vbox_plan):
    possible = possible_nodes("k8s")
    assert all(possible[node.uuid] == node.name for node in vbox_plan.nodes)
    assert len(possible) == 1 + 2 + 7 + 50


def test_medium_capacity():
    assert capacity_mb({"Capacity": "8192 MBytes"}) == 8192
    assert capacity_mb({}) is None


def test_an_image_booted_by_kernel_and_initrd_is_refused_before_vboxmanage_runs(tmp_path):
    def no_vboxmanage(argv):
        raise AssertionError(f"VBoxManage ran: {argv}")

    image = BaseImage(tmp_path / "built.qcow2", "sha256:" + "0" * 64, "qcow2", tmp_path / "vmlinuz",
                      tmp_path / "initrd.img", "root=/dev/vda")
    with pytest.raises(BackendError, match=r"^image built\.qcow2 boots by direct kernel boot, which VirtualBox "):
        ensure_base(VBoxManage(no_vboxmanage), tmp_path, image)
