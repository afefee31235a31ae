"""What of a lab VirtualBox holds, and removing it: VMs tagged with the lab (by UUID), networks the
global extradata records as the lab's, and media named with one of the lab's ids. Nothing else is
touched: a foreign VM, NAT network, host-only interface or medium stays, and so does the shared base.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from labctl.backends.base import LabObject
from labctl.backends.virtualbox.definition import (
    NIC_KINDS,
    RUNNING,
    STATES,
    TAG_KEY,
    NetworkRecord,
    network_key,
    network_records,
    read_tag,
)
from labctl.backends.virtualbox.media import find_medium
from labctl.backends.virtualbox.output import VmEntry
from labctl.backends.virtualbox.vboxmanage import Record, VBoxManage, VBoxManageError
from labctl.errors import BackendError
from labctl.lab.config import MAX_WORKERS
from labctl.lab.identity import Tag, media_pattern
from labctl.lab.plan import derive_uuid

MEDIA_SUFFIXES = (".vdi", "-seed.iso")


def vm_tag(manage: VBoxManage, uuid: str) -> Tag | None:
    """The VM's tag; None when it has none, or has gone meanwhile."""
    try:
        return read_tag(manage.get_extradata(uuid, TAG_KEY))
    except VBoxManageError as err:
        if err.code == "VBOX_E_OBJECT_NOT_FOUND":
            return None
        raise


def tagged_vms(manage: VBoxManage, lab: str) -> Iterator[tuple[VmEntry, Tag]]:
    for entry in manage.list_vms():
        tag = vm_tag(manage, entry.uuid) if entry.accessible else None
        if tag is not None and tag.lab == lab:
            yield entry, tag


def possible_nodes(lab: str) -> dict[str, str]:
    """UUID → node name of every node a lab of this name can have (the plan derives VM UUIDs from them):
    how an inaccessible VM, whose tag went with its settings file, is still known as the lab's."""
    names = ["gateway", "lb1", "lb2", *(f"master{i}" for i in range(1, 8)),
             *(f"worker{i}" for i in range(1, MAX_WORKERS + 1))]
    return {derive_uuid(lab, "domain", name): name for name in names}


def lab_objects(manage: VBoxManage, lab: str, lab_ids: set[str]) -> list[LabObject]:
    found = _vms(manage, lab)
    records = network_records(manage.extradata("global"))
    mine = [record for record in records.values() if record.tag.lab == lab]
    if mine:
        natnetworks = {record.get("Name") for record in manage.list_natnetworks()}
        hostonly = {record.get("Name") for record in manage.list_hostonlyifs()}
        found += [LabObject("network", record.name, _network_state(record, natnetworks, hostonly), record.tag)
                  for record in sorted(mine, key=lambda record: record.name)]
    pattern = media_pattern(lab, lab_ids, MEDIA_SUFFIXES)
    if pattern is not None:
        for medium in [*manage.list_hdds(), *manage.list_dvds()]:
            location = medium.get("Location", "")
            if pattern.match(Path(location).name):
                state = "inaccessible" if medium.get("State") == "inaccessible" else "present"
                found.append(LabObject("volume", location, state, id=medium["UUID"]))
    return found


def _vms(manage: VBoxManage, lab: str) -> list[LabObject]:
    possible = possible_nodes(lab)
    found = []
    for entry in manage.list_vms():
        if not entry.accessible:
            if entry.uuid in possible:
                node = possible[entry.uuid]
                found.append(LabObject("domain", f"{lab}-{node}", "inaccessible", Tag(lab, "", "domain", "", node),
                                       id=entry.uuid))
            continue
        tag = vm_tag(manage, entry.uuid)
        if tag is None or tag.lab != lab:
            continue
        try:
            state = manage.show_vm_info(entry.uuid).state
        except VBoxManageError as err:
            if err.code == "VBOX_E_OBJECT_NOT_FOUND":
                continue  # removed while we listed
            raise
        found.append(LabObject("domain", entry.name, STATES.get(state, state), tag, id=entry.uuid))
    return found


def _network_state(record: NetworkRecord, natnetworks: set[str | None], hostonly: set[str | None]) -> str:
    kind = NIC_KINDS.get(record.mode)
    if kind == "natnetwork":
        return "active" if record.name in natnetworks else "absent"
    if kind == "hostonly":
        return "active" if record.device in hostonly else "absent"
    return "present"


def remove_object(manage: VBoxManage, obj: LabObject) -> None:
    if obj.kind == "domain":
        _remove_vm(manage, obj)
    elif obj.kind == "network":
        _remove_network(manage, obj.name)
    else:
        _remove_medium(manage, obj)


def _remove_vm(manage: VBoxManage, obj: LabObject) -> None:
    """Power off, unregister and delete the VM with its disk (an immutable base stays), then our files
    beside it (the console log; the seed goes as a volume)."""
    if obj.state == "inaccessible":
        with contextlib.suppress(VBoxManageError):  # gone already; --delete would fail: its files are gone
            manage.unregister_vm(obj.id)
        return
    tag = vm_tag(manage, obj.id)
    if tag is None:
        return  # gone meanwhile
    if obj.tag is None or tag.lab != obj.tag.lab:
        raise BackendError(f"VM {obj.name} ({obj.id}) is no longer tagged as lab {obj.tag.lab if obj.tag else '?'}",
                           "left alone; look at it with VBoxManage showvminfo")
    info = manage.show_vm_info(obj.id)
    if info.state in RUNNING:
        with contextlib.suppress(VBoxManageError):  # it may stop by itself meanwhile
            manage.control_vm(obj.id, "poweroff")
    manage.unregister_vm(obj.id, delete=True)
    folder = Path(info.values.get("CfgFile", "")).parent
    uart = info.uart()
    if uart is not None and uart[1].startswith("file,") and Path(uart[1][5:]).parent == folder:
        with contextlib.suppress(FileNotFoundError):
            Path(uart[1][5:]).unlink()
    prune(folder)


def _remove_network(manage: VBoxManage, name: str) -> None:
    record = network_records(manage.extradata("global")).get(name)
    if record is not None and record.mode == "nat":
        try:
            manage.natnetwork_remove(name)
        except VBoxManageError as err:
            if "does not exist" not in err.message:
                raise
    elif record is not None and record.mode == "isolated" and record.owned and record.device:
        if record.device in {found.get("Name") for found in manage.list_hostonlyifs()}:
            manage.hostonlyif_remove(record.device)
    # The record goes last: a destroy cut short still finds it and finishes.
    manage.set_extradata("global", network_key(name), None)


def _remove_medium(manage: VBoxManage, obj: LabObject) -> None:
    kind = "dvd" if obj.name.endswith(".iso") else "disk"

    def registered() -> Record | None:
        return find_medium(manage.list_dvds() if kind == "dvd" else manage.list_hdds(), uuid=obj.id)

    found = registered()
    if found is None:
        return  # deleted with its VM
    location = Path(found.get("Location", obj.name))
    try:
        manage.close_medium(obj.id, kind, delete=location.exists())
    except VBoxManageError:
        # Just after `unregistervm --delete` of its VM, VirtualBox may still list a disk it is deleting (once
        # gone, closemedium takes its UUID for a path), or refuse to delete a seed yet unregister it all the
        # same (closemedium --delete closes what it could not delete): what is left unregistered is ours.
        if registered() is not None:
            raise
        with contextlib.suppress(FileNotFoundError):
            location.unlink()
    prune(location.parent)


def prune(folder: Path) -> None:
    """Remove a node's folder and its lab's group folder once they are empty."""
    for directory in (folder, folder.parent):
        try:
            directory.rmdir()
        except OSError:
            return
