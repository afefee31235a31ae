"""VirtualBox backend: applies the plan through VBoxManage (VirtualBox 7). Thin: argument lists, layout
and tags come from :mod:`.definition`, disks and seeds from :mod:`.media`, networks from :mod:`.networks`,
what ``doctor`` sees from :mod:`.facts`.

VMs are addressed by UUID (the plan's: names are not unique in VirtualBox) and carry their tag in
extradata; networks, which cannot, are recorded in the global extradata. Every step looks at what exists
first, so an ``up`` that VBoxManage or labctl left half done converges when run again.
"""

from __future__ import annotations

import os
from pathlib import Path

from labctl.backends.base import Backend, BaseImage, Clock, HypervisorFacts, LabObject, NodeRequest, Reach, Sleep
from labctl.backends.virtualbox import networks
from labctl.backends.virtualbox.definition import (
    COMPLETE_KEY,
    CONTROLLER,
    DISK_PORT,
    RUNNING,
    SEED_PORT,
    TAG_KEY,
    NodeFiles,
    attach_disk_args,
    attach_seed_args,
    controller_args,
    createvm_args,
    eject_seed_args,
    is_labs_vm,
    modifyvm_args,
    network_records,
    node_commands,
    node_files,
    read_tag,
    render_commands,
    tag_value,
)
from labctl.backends.virtualbox.facts import accel_facts, driver_hint, hypervisor_facts
from labctl.backends.virtualbox.inventory import lab_objects, remove_object, tagged_vms
from labctl.backends.virtualbox.media import delete_seed, ensure_base, ensure_disk, find_base, write_seed
from labctl.backends.virtualbox.output import Attachment, VmInfo
from labctl.backends.virtualbox.vboxmanage import VBoxManage, VBoxManageError
from labctl.errors import BackendError
from labctl.lab.accel import Accel, HostFacts
from labctl.lab.identity import Tag, node_tag
from labctl.lab.plan import NetworkPlan, NodePlan, Plan

ROOT_ENV = "LABCTL_VBOX_DIR"  # where VMs, disks and logs go; default: VirtualBox's default machine folder


class VirtualBoxBackend(Backend):
    name = "virtualbox"
    console_log_per_boot = True  # VirtualBox rewrites a serial port's file at every power-on

    def __init__(self, manage: VBoxManage, version: tuple[int, int, int], root: Path | None = None) -> None:
        self.manage = manage
        self.version = version
        self._root = root

    @classmethod
    def open(cls, target: str | None = None) -> VirtualBoxBackend:
        if target:
            raise BackendError(f"--connect {target}: VirtualBox is driven on this host, not through a URI",
                               "drop --connect; LABCTL_VBOXMANAGE selects the VBoxManage to run")
        manage = VBoxManage()
        return cls(manage, manage.check_version())

    @classmethod
    def reach(cls, target: str | None) -> Reach:
        return Reach(local=True)

    def close(self) -> None:
        """Nothing held open: every VBoxManage call is a process of its own."""

    @property
    def target(self) -> str:
        return f"VirtualBox {'.'.join(map(str, self.version))} ({self.manage.program})"

    @property
    def root(self) -> Path:
        """The folder of labctl's VMs and media: LABCTL_VBOX_DIR, else VirtualBox's default machine folder."""
        if self._root is None:
            configured = os.environ.get(ROOT_ENV)
            self._root = Path(configured or self.manage.system_properties()["Default machine folder"])
        return self._root

    def accel_facts(self) -> HostFacts:
        return accel_facts(self.manage)

    def doctor_facts(self, plan: Plan) -> HypervisorFacts:
        return hypervisor_facts(self, plan)

    # --- applying the plan ------------------------------------------------------------------

    def find_lab_ids(self, lab: str) -> set[str]:
        ids = {tag.lab_id for _, tag in tagged_vms(self.manage, lab)}
        return ids | {rec.tag.lab_id for rec in network_records(self.manage.extradata("global")).values()
                      if rec.tag.lab == lab}

    def ensure_base_image(self, image: BaseImage) -> str:
        return ensure_base(self.manage, self.root, image)

    def ensure_network(self, net: NetworkPlan, tag: Tag) -> str:
        return networks.ensure_network(self.manage, net, tag)

    def vm_info(self, uuid: str) -> VmInfo | None:
        """The VM of ``uuid``, or None when VirtualBox has none; an inaccessible one is an error."""
        try:
            return self.manage.show_vm_info(uuid)
        except VBoxManageError as err:
            if err.code == "VBOX_E_OBJECT_NOT_FOUND":
                return None
            if err.code == "E_ACCESSDENIED":
                raise BackendError(f"VM {uuid} is registered but inaccessible (its settings file is gone)",
                                   "`labctl destroy` unregisters it; then `labctl up`") from err
            raise

    def ensure_node(self, request: NodeRequest) -> str:
        node, tag = request.node, request.tag
        files = node_files(self.root, tag.lab, node, tag.lab_id)
        info = self.vm_info(node.uuid)
        if info is not None:
            values = self.manage.extradata(node.uuid)
            self._check_owned(node, info, values, tag, files)
            if values.get(COMPLETE_KEY) == "yes":
                return "exists"
        else:
            info, values = self._create_vm(node, tag, files), {}
        if read_tag(values.get(TAG_KEY)) != tag:
            self.manage.set_extradata(node.uuid, TAG_KEY, tag_value(tag))
        self._define(request, files, info)
        self.manage.set_extradata(node.uuid, COMPLETE_KEY, "yes")
        return "created"

    def _check_owned(self, node: NodePlan, info: VmInfo, values: dict[str, str], tag: Tag, files: NodeFiles) -> None:
        if is_labs_vm(read_tag(values.get(TAG_KEY)), tag.lab, info.values.get("CfgFile", ""), files.settings):
            return
        raise BackendError(f"VM {node.domain_name} ({node.uuid}) exists but is not part of lab {tag.lab}",
                           "remove it or choose another lab name (--name)")

    def _create_vm(self, node: NodePlan, tag: Tag, files: NodeFiles) -> VmInfo:
        if files.settings.exists():
            self.manage.register_vm(files.settings)  # createvm was killed after writing it, before registering
        else:
            self.manage.call(*createvm_args(self.root, tag.lab, node))
        info = self.vm_info(node.uuid)
        if info is None:
            raise BackendError(f"{files.settings} holds a VM other than {node.domain_name} ({node.uuid})",
                               "move that file away, then run `labctl up` again")
        return info

    def _define(self, request: NodeRequest, files: NodeFiles, info: VmInfo) -> None:
        """Everything after createvm, each part skipped where it is already done."""
        node = request.node
        base = find_base(self.manage, request.image)
        if base is None:
            raise BackendError(f"the base image {request.image.digest[:19]}… is not imported", "run `labctl up`")
        targets = networks.nic_targets(self.manage, request.tag.lab, node)
        self.manage.call(*modifyvm_args(node, targets, files.console))
        if CONTROLLER not in info.controllers():
            self.manage.call(*controller_args(node.uuid))
        disk = ensure_disk(self.manage, files.disk, base["UUID"], node)
        attached = _slot(info, DISK_PORT)
        if attached is None or attached.uuid != disk:
            self.manage.call(*attach_disk_args(node.uuid, disk))
        seed = _slot(info, SEED_PORT)
        if seed is None or seed.medium != str(files.seed):
            write_seed(self.manage, files.seed, request.seed_iso)
            self.manage.call(*attach_seed_args(node.uuid, str(files.seed)))

    def start_node(self, node: NodePlan) -> str:
        info = self.vm_info(node.uuid)
        if info is None:
            raise BackendError(f"VM {node.domain_name} is not defined", "run `labctl up`")
        if info.state in RUNNING:
            return "running"
        try:
            self.manage.start_vm(node.uuid)
        except VBoxManageError as err:
            raise BackendError(f"starting node {node.name}: {err.message}", driver_hint(info)) from err
        return "started"

    def stop_node(self, node: NodePlan, timeout: float, clock: Clock, sleep: Sleep) -> str:
        """ACPI power button, waited for at most ``timeout`` seconds, then powered off."""
        info = self.vm_info(node.uuid)
        if info is None:
            return "missing"
        if info.state not in RUNNING:
            return "stopped"
        self.manage.control_vm(node.uuid, "acpipowerbutton")
        deadline = clock() + timeout
        while clock() < deadline:
            sleep(1.0)
            if not self._running(node.uuid):
                return "shut down"
        try:
            self.manage.control_vm(node.uuid, "poweroff")
        except VBoxManageError:
            if self._running(node.uuid):
                raise
            return "shut down"  # it went down between the last look and the poweroff
        return "forced off"

    def _running(self, uuid: str) -> bool:
        info = self.vm_info(uuid)
        return info is not None and info.state in RUNNING

    def remove_seed(self, node: NodePlan, tag: Tag) -> str:
        """Empty the seed's DVD drive (live, where the VM runs) and delete the ISO: it holds secrets."""
        files = node_files(self.root, tag.lab, node, tag.lab_id)
        info = self.vm_info(node.uuid)
        did = "absent"
        slot = _slot(info, SEED_PORT) if info is not None else None
        if info is not None and slot is not None and slot.medium != "emptydrive":
            self.manage.call(*eject_seed_args(node.uuid, info.state in RUNNING))
            did = "removed"
        if delete_seed(self.manage, files.seed):
            did = "removed"
        return did

    def definitions(self, plan: Plan, lab_id: str, accel: Accel, image: BaseImage) -> dict[str, str]:
        """The VBoxManage commands `up` runs for each network and node, as reviewable scripts."""
        lab = plan.lab.name
        base = find_base(self.manage, image)
        base_name = base["Location"] if base else f"<base VDI of {image.digest[:19]}…, imported by up>"
        targets = networks.plan_targets(self.manage, plan)
        files = {f"networks/{net.name}.txt": render_commands(f"network {net.name} ({net.mode})",
                                                             networks.commands(net, lab, lab_id))
                 for net in plan.networks}
        for node in plan.nodes:
            tag = node_tag(lab, lab_id, node.role, node.name)
            files[f"{node.name}/vm.txt"] = render_commands(
                f"VM {node.domain_name} of lab {lab} ({node.role}), by UUID {node.uuid}",
                node_commands(self.root, lab, node, tag, targets, base_name))
        return files

    # --- inventory and access ---------------------------------------------------------------

    def lab_objects(self, lab: str, lab_ids: set[str]) -> list[LabObject]:
        return lab_objects(self.manage, lab, lab_ids)

    def remove(self, obj: LabObject) -> None:
        remove_object(self.manage, obj)

    def console_log(self, node: NodePlan) -> Path | None:
        """The file the VM's serial port writes (from its settings); None before the VM exists."""
        info = self.vm_info(node.uuid)
        uart = info.uart() if info is not None else None
        if uart is None or not uart[1].startswith("file,"):
            return None
        return Path(uart[1].removeprefix("file,"))

    def console_argv(self, node: NodePlan) -> list[str]:
        """VirtualBox writes the serial port to a file: following it (read-only) is what it offers."""
        log = self.console_log(node)
        if log is None:
            raise BackendError(f"VM {node.domain_name} has no serial log yet", "run `labctl up`")
        if os.name == "nt":
            raise BackendError(f"{node.name}'s serial console is the file {log}",
                               f"follow it: labctl logs {node.name} -f")
        return ["tail", "-n", "+1", "-F", str(log)]


def _slot(info: VmInfo, port: int) -> Attachment | None:
    """What is in port ``port`` of the lab's controller (an image, ``emptydrive``), or None."""
    return next((a for a in info.attachments() if (a.controller, a.port, a.device) == (CONTROLLER, port, 0)), None)
