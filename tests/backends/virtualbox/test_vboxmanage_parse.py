"""The VBoxManage parsers and error translation, on outputs recorded from the real VirtualBox 7.2
(data/recorded.json, made by record_outputs.py), and the command layer with a recording runner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from labctl.backends.virtualbox.output import (
    INACCESSIBLE,
    Attachment,
    Nic,
    ParseError,
    VmInfo,
    mac_from_vbox,
    parse_created_uuid,
    parse_extradata,
    parse_extradata_value,
    parse_machinereadable,
    parse_records,
    parse_version,
    parse_vm_list,
)
from labctl.backends.virtualbox.vboxmanage import (
    VBoxManage,
    VBoxManageError,
    error_text,
    mac_to_vbox,
    subcommand_of,
)
from labctl.errors import BackendError

RECORDED = json.loads((Path(__file__).with_name("data") / "recorded.json").read_text(encoding="utf-8"))
UUID_LENGTH = 36


def out(case: str) -> str:
    return RECORDED[case]["stdout"]


def failure(case: str) -> tuple[str, str | None]:
    recorded = RECORDED[case]
    assert recorded["code"] != 0
    return error_text(recorded["stderr"], recorded["stdout"], recorded["code"])


# --- key="value" ------------------------------------------------------------------------------------


def test_showvminfo_of_a_lab_node_reads_back_every_setting():
    info = VmInfo.parse(out("showvminfo-gateway"))
    assert (info.name, info.state, info.memory, info.cpus) == ("k8s-gateway", "poweroff", 2048, 2)
    assert info.groups == ("/labctl/k8s",)
    assert len(info.uuid) == UUID_LENGTH and info.uuid == info["hardwareuuid"]
    assert [info[f"boot{i}"] for i in range(1, 5)] == ["disk", "dvd", "none", "none"]
    assert info.nics() == [
        Nic(1, "natnetwork", "k8s-nat", "virtio", "52:54:00:a1:b2:c3"),
        Nic(2, "intnet", "k8s-internal", "virtio", "52:54:00:d4:e5:f6"),
        Nic(3, "bridged", "nosuchbr0", "virtio", "52:54:00:01:02:03"),
    ]
    assert info.uart() == ("0x03f8,4", "file,/WORK/logs/k8s-gateway.log")
    assert info.uart(2) is None
    assert info.controllers() == {"virtio": "VirtioSCSI"}
    disk, seed = info.attachments()
    assert disk == Attachment("virtio", 0, 0, "/WORK/media/k8s-gateway.vdi", info["virtio-ImageUUID-0-0"])
    assert (seed.port, seed.medium) == (1, "/WORK/media/gateway-seed.iso")


def test_machinereadable_quoted_values_keep_escapes_and_newlines():
    values = parse_machinereadable(out("showvminfo-gateway"))
    assert values["description"] == 'a "quoted" word, a back\\slash\nand a second line'
    assert values["GuestMemoryBalloon"] == "0"  # the line after the two-line value
    assert values["memory"] == "2048"  # bare numbers
    assert " rec_screen0" not in values and "rec_screen0" not in values  # a line that is no key=value


def test_machinereadable_quoted_keys():
    text = 'storagecontrollername0="we\\"ird=ctl"\n"we\\"ird=ctl-0-0"="none"\n"we\\"ird=ctl-1-0"="/d.vdi"\n'
    values = parse_machinereadable(text)
    assert values == {"storagecontrollername0": 'we"ird=ctl', 'we"ird=ctl-0-0': "none", 'we"ird=ctl-1-0': "/d.vdi"}


def test_machinereadable_unterminated_quote_is_an_error():
    with pytest.raises(ParseError):
        parse_machinereadable('description="no end\n')


def test_a_worker_with_one_nic():
    info = VmInfo.parse(out("showvminfo-worker"))
    assert info.nics() == [Nic(1, "intnet", "k8s-internal", "virtio", "52:54:00:07:08:09")]


# --- Key: value records -----------------------------------------------------------------------------


def test_list_natnetworks():
    records = parse_records(out("list-natnetworks"))
    # "half-made": its `natnetwork add` failed on a bad CIDR, and left it with the default network
    assert [(r["Name"], r["Network"]) for r in records] == [
        ("k8s-nat", "10.213.7.0/24"), ("other-nat", "10.213.8.0/24"), ("half-made", "10.0.2.0/24")]
    assert records[0] == {
        "Name": "k8s-nat", "Network": "10.213.7.0/24", "Gateway": "10.213.7.1", "DHCP Server": "No",
        "IPv6": "No", "IPv6 Prefix": "fd17:625c:f037:2::/64", "IPv6 Default": "No",
    }


def test_natnetwork_list_has_a_header_and_indented_mappings():
    records = parse_records(out("natnetwork-list").rsplit("\n\n", 1)[0])  # without the "N networks found" line
    assert records[0] == {"NAT Networks": ""}
    assert records[1]["Enabled"] == "Yes"
    assert records[1]["IPv6 Default"] == "No\nloopback mappings (ipv4)\n127.0.0.1=2"


def test_list_hdds_base_and_children():
    records = parse_records(out("list-hdds-after-unregister"))
    qcow2, base, child = records
    assert (qcow2["Storage format"], qcow2["Parent UUID"]) == ("QCOW", "base")
    assert (base["Type"], base["Location"], base["Capacity"]) == ("immutable", "/WORK/media/base.vdi", "128 MBytes")
    assert (child["Type"], child["Parent UUID"]) == ("normal (differencing)", base["UUID"])


def test_a_value_on_two_lines_and_indented_continuations():
    inaccessible = parse_records(out("showmediuminfo-inaccessible"))[0]
    assert inaccessible["State"] == "inaccessible"
    assert inaccessible["Access Error"] == (
        "Could not open the medium '/WORK/media/lost.vdi'.\n"
        "VD: error VERR_FILE_NOT_FOUND opening image file '/WORK/media/lost.vdi' (VERR_FILE_NOT_FOUND)"
    )
    assert inaccessible["Type"] == "normal (base)"
    base = parse_records(out("showmediuminfo-base"))[0]
    assert len(base["Child UUIDs"].split("\n")) == 2
    diff = parse_records(out("showmediuminfo-diff-autoreset"))[0]
    assert diff["Auto-Reset"] == "on"


def test_list_intnets_has_no_blank_lines_between_records():
    assert parse_records(out("list-intnets")) == [{"Name": "intnet"}, {"Name": "k8s-internal"}]


def test_list_bridgedifs_a_long_key_and_an_empty_value():
    records = parse_records(out("list-bridgedifs"))
    eth0 = next(r for r in records if r["Name"] == "eth0")
    assert eth0["IPV6NetworkMaskPrefixLength"] == "64"
    assert eth0["Status"] == "Up"
    assert any(r["IPV6Address"] == "" for r in records)


def test_empty_lists():
    assert parse_records(out("list-hostonlyifs")) == []
    assert parse_records("") == []


def test_list_dvds():
    assert [r["Location"] for r in parse_records(out("list-dvds"))] == [
        "/WORK/media/gateway-seed.iso", "/WORK/media/worker1-seed.iso"]


# --- list vms, extradata, version, created UUIDs -------------------------------------------------


def test_list_vms_duplicate_names_odd_names_and_inaccessible():
    entries = parse_vm_list(out("list-vms"))
    assert [e.name for e in entries] == ["k8s-gateway", "k8s-worker1", "k8s-worker1", 'odd "name" {x}', INACCESSIBLE]
    assert len({e.uuid for e in entries}) == len(entries)
    assert [e.accessible for e in entries] == [True, True, True, True, False]
    assert parse_vm_list(out("list-vms-before-restart"))[-1].name == "gone"
    with pytest.raises(ParseError):
        parse_vm_list("k8s-gateway {not-a-uuid}")


def test_extradata():
    assert parse_extradata(out("getextradata-enumerate")) == {
        "labctl/lab": "k8s", "labctl/lab-id": "0123abcd", "labctl/note": "two\nlines", "labctl/role": "gateway"}
    assert parse_extradata("") == {}
    assert parse_extradata_value(out("getextradata-value")) == "gateway"
    assert parse_extradata_value(out("getextradata-missing")) is None


def test_version_and_created_uuids():
    assert parse_version(out("version")) == (7, 2, 22)
    with pytest.raises(ParseError):
        parse_version("Oracle VirtualBox")
    for case in ("createvm", "clonemedium", "createmedium-diff"):
        assert len(parse_created_uuid(out(case))) == UUID_LENGTH


def test_macs():
    assert mac_from_vbox("525400A1B2C3") == "52:54:00:a1:b2:c3"
    assert mac_to_vbox("52:54:00:a1:b2:c3") == "525400A1B2C3"
    with pytest.raises(ValueError):
        mac_to_vbox("52:54:00")
    with pytest.raises(ParseError):
        mac_from_vbox("zz")


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "message", "code"), [
    ("showvminfo-missing", "Could not find a registered machine named 'no-such-vm'", "VBOX_E_OBJECT_NOT_FOUND"),
    ("startvm", "The virtual machine 'k8s-gateway' has terminated unexpectedly during startup with exit code 1 (0x1)",
     "NS_ERROR_FAILURE"),
    ("hostonlyif-create", "Failed to create the host-only adapter; VBoxNetAdpCtl: Error while adding new interface: "
     "failed to open /dev/vboxnetctl: No such file or directory", "NS_ERROR_FAILURE"),
    ("natnetwork-exists", "NATNetwork server already exists", None),
    ("closemedium-base-with-children", "Cannot close medium '/WORK/media/base.vdi' because it has 2 child media; "
     "Failed to delete medium. Error code VBOX_E_OBJECT_IN_USE", "VBOX_E_OBJECT_IN_USE"),
    ("clonemedium-exists", "Failed to clone medium; Could not create the clone medium '/WORK/media/base.vdi'.; "
     "VDI: cannot create image '/WORK/media/base.vdi' (VERR_ALREADY_EXISTS)", "VBOX_E_FILE_ERROR"),
    ("unknown-subcommand", "Invalid command 'frobnicate'", None),
    ("unregistervm-usage", "exit code 1 (Usage - Unregister a virtual machine:)", None),
    ("controlvm-not-running", "Machine 'k8s-gateway' is not currently running.", None),
])
def test_error_text(case, message, code):
    assert failure(case) == (message, code)


def test_error_text_of_an_aborted_operation_and_of_plain_stderr():
    stderr = ("0%...\nProgress object failure: NS_ERROR_ABORT\nVBoxManage: error: Failed to clone medium\n"
              "VBoxManage: error: Code NS_ERROR_ABORT (0x80004004) - Operation aborted (extended info not available)\n"
              'VBoxManage: error: Context: "RTEXITCODE handleCloneMedium(HandlerArg*)" at line 1208 of file x.cpp\n')
    assert error_text(stderr) == (
        "Failed to clone medium; Operation aborted (extended info not available)", "NS_ERROR_ABORT")
    assert error_text("0%...10%...something odd\n") == ("something odd", None)
    assert error_text("", "", 137) == ("exit code 137", None)


def test_subcommand_names():
    assert subcommand_of(["natnetwork", "add", "--netname", "x"]) == "natnetwork add"
    assert subcommand_of(["showvminfo", "vm", "--machinereadable"]) == "showvminfo"
    assert subcommand_of(["--version"]) == "--version"
    assert subcommand_of(["hostonlyif", "create"]) == "hostonlyif create"


# --- the command layer, with a recording runner ---------------------------------------------------


class Replay:
    """A runner that answers each subcommand from a recorded case and remembers the argv."""

    def __init__(self, **cases: str) -> None:
        self.cases = cases
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        recorded = RECORDED[self.cases[subcommand_of(argv[1:]).replace(" ", "_").lstrip("-")]]
        return recorded["code"], recorded["stdout"], recorded["stderr"]


def test_failed_command_is_one_line_naming_the_subcommand():
    vbox = VBoxManage(Replay(startvm="startvm"))
    with pytest.raises(VBoxManageError) as caught:
        vbox.start_vm("k8s-gateway")
    error = caught.value
    assert isinstance(error, BackendError)
    assert str(error) == ("VBoxManage startvm: The virtual machine 'k8s-gateway' has terminated unexpectedly "
                          "during startup with exit code 1 (0x1)")
    assert "\n" not in str(error) and (error.subcommand, error.code, error.returncode) == (
        "startvm", "NS_ERROR_FAILURE", 1)


def test_commands_are_argument_lists():
    runner = Replay(createvm="createvm", natnetwork_add="natnetwork-add", clonemedium="clonemedium")
    vbox = VBoxManage(runner, program="/opt/vbox/VBoxManage")
    uuid = vbox.create_vm("k8s gateway", Path("/w/vms"), groups=["/labctl/k8s"], uuid=None, ostype="Debian_64")
    vbox.natnetwork_add("k8s-nat", "10.213.7.0/24")
    vbox.clone_medium("/w/base.qcow2", Path("/w/base.vdi"))
    assert len(uuid) == UUID_LENGTH
    assert runner.calls == [
        ["/opt/vbox/VBoxManage", "createvm", "--name", "k8s gateway", "--basefolder", "/w/vms", "--register",
         "--groups", "/labctl/k8s", "--ostype", "Debian_64"],
        ["/opt/vbox/VBoxManage", "natnetwork", "add", "--netname", "k8s-nat", "--network", "10.213.7.0/24",
         "--enable", "--dhcp", "off"],
        ["/opt/vbox/VBoxManage", "clonemedium", "disk", "/w/base.qcow2", "/w/base.vdi", "--format", "VDI"],
    ]


def test_version_check_refuses_virtualbox_6():
    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        return 0, "6.1.50r161033\n", ""

    with pytest.raises(BackendError) as caught:
        VBoxManage(run).check_version()
    assert str(caught.value).startswith("VirtualBox 6.1.50 is too old: labctl needs 7.0 or later")
    assert VBoxManage(Replay(version="version")).check_version() == (7, 2, 22)


def test_program_from_the_environment(monkeypatch):
    monkeypatch.setenv("LABCTL_VBOXMANAGE", "/somewhere/VBoxManage")
    assert VBoxManage(Replay()).program == "/somewhere/VBoxManage"
    monkeypatch.delenv("LABCTL_VBOXMANAGE")
    assert VBoxManage(Replay()).program == "VBoxManage"


def test_missing_program_is_one_line_with_a_hint(monkeypatch):
    monkeypatch.setenv("LABCTL_VBOXMANAGE", "/nonexistent/VBoxManage")
    with pytest.raises(BackendError) as caught:
        VBoxManage().version()
    assert str(caught.value) == ("/nonexistent/VBoxManage not found (install VirtualBox 7 (VBoxManage on PATH) "
                                 "or point LABCTL_VBOXMANAGE at VBoxManage)")


def test_host_only_interfaces_created_named_and_refused():
    def made(argv: Sequence[str]) -> tuple[int, str, str]:
        # VBoxManageHostonly.cpp prints this on success (not recordable here: no vboxnetctl)
        return 0, "Interface 'vboxnet2' was successfully created\n", "0%...100%\n"

    assert VBoxManage(made).hostonlyif_create() == "vboxnet2"
    with pytest.raises(VBoxManageError) as caught:
        VBoxManage(Replay(hostonlyif_create="hostonlyif-create")).hostonlyif_create()
    assert str(caught.value) == (
        "VBoxManage hostonlyif create: Failed to create the host-only adapter; VBoxNetAdpCtl: Error while adding new "
        "interface: failed to open /dev/vboxnetctl: No such file or directory")


def test_ejecting_a_running_guests_dvd_forces_the_unmount():
    runner = Replay(storageattach="version")  # any successful answer
    VBoxManage(runner, program="VBoxManage").storage_attach("u", "virtio", 1, 0, kind="dvddrive",
                                                           medium="emptydrive", force_unmount=True)
    assert runner.calls == [["VBoxManage", "storageattach", "u", "--storagectl", "virtio", "--port", "1",
                             "--device", "0", "--type", "dvddrive", "--medium", "emptydrive", "--forceunmount"]]


def test_a_command_that_found_no_vboxsvc_runs_again():
    """VBoxSVC exits a few seconds after its last client; a command arriving then never reached it."""
    no_server = ("VBoxManage: error: Failed to create the VirtualBox object!\n"
                 "VBoxManage: error: Code NS_ERROR_ABORT (0x80004004) - Stream operation would block (extended info "
                 "not available)\nVBoxManage: error: Most likely, the VirtualBox COM server is not running or failed "
                 "to start.\n")
    answers = [(1, "", no_server), (1, "", no_server), (0, "Value: k8s\n", "")]
    slept: list[float] = []
    vbox = VBoxManage(lambda argv: answers.pop(0), sleep=slept.append)
    assert vbox.get_extradata("global", "labctl/x") == "k8s" and slept == [1.0, 2.0]
    answers[:] = [(1, "", no_server)] * 4
    with pytest.raises(VBoxManageError, match=r"^VBoxManage getextradata: Failed to create the VirtualBox object!"):
        vbox.get_extradata("global", "labctl/x")
    assert slept == [1.0, 2.0, 1.0, 2.0, 4.0]
