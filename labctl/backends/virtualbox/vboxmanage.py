"""The VBoxManage command layer: argument lists in, parsed output or one-line errors out.

Every call goes through an injected ``run(argv) -> (exit code, stdout, stderr)``; the default runs
the program named by ``LABCTL_VBOXMANAGE`` or ``VBoxManage`` on PATH, with an argument list, never
a shell. A failed command raises :class:`VBoxManageError` (a :class:`BackendError`) naming the
subcommand and VirtualBox's own message, without its ``VBoxManage: error:`` prefixes, progress
dots and ``Details:``/``Context:`` lines; the result code (``VBOX_E_OBJECT_NOT_FOUND``, …) is kept
on the error for callers that act on it.

Facts the backend has to live with (measured on VirtualBox 7.2, see /work/notes/vbox.md): names
of VMs are not unique (address VMs by UUID); ``unregistervm --delete`` also deletes a normal base
disk once no other VM's disk derives from it (an immutable base survives); a clone whose client
was killed completes inside VBoxSVC, one whose VBoxSVC died leaves a partial file that opens as if
whole.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from labctl.backends.virtualbox.output import (
    VmEntry,
    VmInfo,
    parse_created_uuid,
    parse_extradata,
    parse_extradata_value,
    parse_info_lines,
    parse_records,
    parse_version,
    parse_vm_list,
)
from labctl.errors import BackendError

Runner = Callable[[Sequence[str]], tuple[int, str, str]]
Record = dict[str, str]

PROGRAM_ENV = "LABCTL_VBOXMANAGE"
MIN_VERSION = (7, 0)
DEFAULT_TIMEOUT = 3600.0  # a clone of a large image takes minutes
# Subcommands whose second word is part of the command's name (``natnetwork add``).
_GROUP_COMMANDS = frozenset({
    "natnetwork", "hostonlyif", "hostonlynet", "dhcpserver", "extpack", "usbfilter", "mediumproperty",
    "guestproperty", "cloud", "cloudprofile", "unattended", "updatecheck",
})
_ERROR_PREFIX = "VBoxManage: error: "
_PROGRESS = re.compile(r"^(?:\d+%\.{3})+")
_DETAILS_CODE = re.compile(r"Details: code (?P<code>\w+)")
_BARE_CODE = re.compile(r"Code (?P<code>\w+) \(0x[0-9a-fA-F]+\) - (?P<text>.*)")
# VBoxManage's own words when it cannot get at VBoxSVC (which then never saw the command), and the waits
# before running it again.
NO_SERVER = "Failed to create the VirtualBox object!"
NO_SERVER_RETRIES = (1.0, 2.0, 4.0)
_CREATED_INTERFACE = re.compile(r"Interface '(?P<name>[^']+)' was successfully created")
_INSTALL_HINT = f"install VirtualBox 7 (VBoxManage on PATH) or point {PROGRAM_ENV} at VBoxManage"


class VBoxManageError(BackendError):
    """A VBoxManage command failed; ``code`` is VirtualBox's result code name where it gave one."""

    def __init__(self, subcommand: str, message: str, code: str | None = None, returncode: int = 1) -> None:
        super().__init__(f"VBoxManage {subcommand}: {message}")
        self.subcommand = subcommand
        self.code = code
        self.returncode = returncode


def default_program() -> str:
    return os.environ.get(PROGRAM_ENV) or "VBoxManage"


def subprocess_runner(timeout: float = DEFAULT_TIMEOUT) -> Runner:
    """Run argv as a subprocess: (exit code, stdout, stderr). A missing program or a timeout
    becomes a :class:`BackendError`."""

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        try:
            result = subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                                    stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        except FileNotFoundError as err:
            raise BackendError(f"{argv[0]} not found", _INSTALL_HINT) from err
        except OSError as err:
            raise BackendError(f"cannot run {argv[0]}: {err.strerror or err}", _INSTALL_HINT) from err
        except subprocess.TimeoutExpired as err:
            raise BackendError(f"{subcommand_of(argv[1:])} timed out after {timeout:.0f} s") from err
        return result.returncode, result.stdout, result.stderr

    return run


def subcommand_of(args: Sequence[str]) -> str:
    """``["natnetwork", "add", "--netname", …]`` → ``natnetwork add``; ``["showvminfo", vm]`` → ``showvminfo``."""
    words = [arg for arg in args if not arg.startswith("-")][:2]
    if not words:
        return "--version" if "--version" in args else "(no subcommand)"
    return " ".join(words) if words[0] in _GROUP_COMMANDS and len(words) > 1 else words[0]


def error_text(stderr: str, stdout: str = "", returncode: int = 1) -> tuple[str, str | None]:
    """VirtualBox's message in a failed command's output, on one line, and its result code.

    ``VBoxManage: error:`` lines are the message; ``Details: code X`` gives the code; ``Context:``
    lines (VBoxManage's own source) and progress dots go; repeated messages are given once. Without
    such lines: the last line of stderr, else the first of stdout (a usage text)."""
    messages: list[str] = []
    code = None
    for raw in stderr.splitlines():
        line = _PROGRESS.sub("", raw.strip())
        if not line.startswith(_ERROR_PREFIX):
            continue
        text = line[len(_ERROR_PREFIX):].strip()
        if details := _DETAILS_CODE.match(text):
            code = code or details["code"]
        elif bare := _BARE_CODE.match(text):
            code = code or bare["code"]
            text = bare["text"]
        if text and not text.startswith(("Details: ", "Context: ")) and text not in messages:
            messages.append(text)
    if messages:
        return "; ".join(messages), code
    fallback = [line.strip() for line in stderr.splitlines() if _PROGRESS.sub("", line.strip())]
    if fallback:
        return _PROGRESS.sub("", fallback[-1]), code
    usage = next((line.strip() for line in stdout.splitlines() if line.strip()), "")
    return (f"exit code {returncode}" + (f" ({usage})" if usage else "")), code


def createvm_argv(name: str, basefolder: Path, *, uuid: str | None = None, groups: Sequence[str] = (),
                  ostype: str | None = None) -> list[str]:
    args = ["createvm", "--name", name, "--basefolder", str(basefolder), "--register"]
    if uuid:
        args += ["--uuid", uuid]
    if groups:
        args += ["--groups", ",".join(groups)]
    if ostype:
        args += ["--ostype", ostype]
    return args


def storagectl_argv(vm: str, name: str, *, bus: str, controller: str | None = None, port_count: int | None = None,
                    bootable: bool | None = None) -> list[str]:
    args = ["storagectl", vm, "--name", name, "--add", bus]
    if controller:
        args += ["--controller", controller]
    if port_count is not None:
        args += ["--portcount", str(port_count)]
    if bootable is not None:
        args += ["--bootable", "on" if bootable else "off"]
    return args


def storageattach_argv(vm: str, controller: str, port: int, device: int, *, kind: str | None, medium: str,
                       force_unmount: bool = False) -> list[str]:
    args = ["storageattach", vm, "--storagectl", controller, "--port", str(port), "--device", str(device)]
    if kind:
        args += ["--type", kind]
    return [*args, "--medium", medium, *(["--forceunmount"] if force_unmount else [])]


def diff_medium_argv(parent: str, target: Path, fmt: str = "VDI") -> list[str]:
    return ["createmedium", "disk", "--filename", str(target), "--diffparent", parent, "--format", fmt]


def mac_to_vbox(mac: str) -> str:
    """``52:54:00:a1:b2:c3`` → ``525400A1B2C3`` (what ``--macaddressN`` takes)."""
    digits = mac.replace(":", "").replace("-", "")
    if not re.fullmatch(r"[0-9A-Fa-f]{12}", digits):
        raise ValueError(f"not a MAC address: {mac!r}")
    return digits.upper()


class VBoxManage:
    """Thin, typed wrappers of the VBoxManage subcommands the backend uses; :meth:`call` for the rest."""

    def __init__(self, run: Runner | None = None, program: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.program = program or default_program()
        self._run = run or subprocess_runner()
        self._sleep = sleep

    def call(self, *args: str) -> str:
        """Run ``VBoxManage ARGS…``; stdout, or :class:`VBoxManageError`.

        A command that could not reach VBoxSVC (it was exiting after its idle time, or starting slowly) did
        nothing, and runs again, a few times."""
        for delay in (*NO_SERVER_RETRIES, None):
            code, out, err = self._run([self.program, *args])
            if code == 0:
                return out
            if delay is None or NO_SERVER not in err:
                break
            self._sleep(delay)
        message, result_code = error_text(err, out, code)
        raise VBoxManageError(subcommand_of(args), message, result_code, code)

    # --- version --------------------------------------------------------------------------------

    def version(self) -> tuple[int, int, int]:
        return parse_version(self.call("--version"))

    def check_version(self) -> tuple[int, int, int]:
        """The version, or a one-line :class:`BackendError` for VirtualBox older than 7.0."""
        version = self.version()
        if version[:2] < MIN_VERSION:
            found = ".".join(map(str, version))
            raise BackendError(f"VirtualBox {found} is too old: labctl needs 7.0 or later", _INSTALL_HINT)
        return version

    # --- VMs ----------------------------------------------------------------------------------------

    def list_vms(self) -> list[VmEntry]:
        return parse_vm_list(self.call("list", "vms"))

    def list_running_vms(self) -> list[VmEntry]:
        return parse_vm_list(self.call("list", "runningvms"))

    def create_vm(self, name: str, basefolder: Path, *, uuid: str | None = None, groups: Sequence[str] = (),
                  ostype: str | None = None) -> str:
        """Create and register a VM; its UUID. ``groups`` like ``/labctl/lab``."""
        return parse_created_uuid(self.call(*createvm_argv(name, basefolder, uuid=uuid, groups=groups,
                                                           ostype=ostype)))

    def register_vm(self, settings: Path) -> None:
        """Register the VM of a settings file (one that ``createvm`` wrote but, killed, did not register)."""
        self.call("registervm", str(settings))

    def modify_vm(self, vm: str, *options: str) -> None:
        """``modifyvm VM OPTIONS…``; all or nothing (VirtualBox discards the lot on an error)."""
        self.call("modifyvm", vm, *options)

    def show_vm_info(self, vm: str) -> VmInfo:
        return VmInfo.parse(self.call("showvminfo", vm, "--machinereadable"))

    def start_vm(self, vm: str, kind: str = "headless") -> None:
        self.call("startvm", vm, "--type", kind)

    def control_vm(self, vm: str, *action: str) -> None:
        self.call("controlvm", vm, *action)

    def unregister_vm(self, vm: str, *, delete: bool = False) -> None:
        """Unregister; ``delete`` also deletes the VM's files and its disks, a normal base included
        when nothing else derives from it."""
        self.call("unregistervm", vm, *(["--delete"] if delete else []))

    def storage_ctl(self, vm: str, name: str, *, bus: str, controller: str | None = None,
                    port_count: int | None = None, bootable: bool | None = None) -> None:
        """Add a storage controller: bus ``virtio-scsi``, ``ide``, ``sata``…; controller ``VirtIO``, ``PIIX4``…"""
        self.call(*storagectl_argv(vm, name, bus=bus, controller=controller, port_count=port_count,
                                   bootable=bootable))

    def storage_attach(self, vm: str, controller: str, port: int, device: int, *, kind: str | None,
                       medium: str, force_unmount: bool = False) -> None:
        """Attach ``medium`` (a path, UUID, ``emptydrive`` or ``none`` to detach) as ``kind``
        (``hdd``, ``dvddrive``; None when detaching); ``force_unmount`` ejects what a running guest holds."""
        self.call(*storageattach_argv(vm, controller, port, device, kind=kind, medium=medium,
                                      force_unmount=force_unmount))

    # --- extradata ----------------------------------------------------------------------------------

    def set_extradata(self, vm: str, key: str, value: str | None) -> None:
        """Set ``key`` (None deletes it). ``vm`` may be ``global``."""
        self.call("setextradata", vm, key, *([] if value is None else [value]))

    def get_extradata(self, vm: str, key: str) -> str | None:
        return parse_extradata_value(self.call("getextradata", vm, key))

    def extradata(self, vm: str) -> dict[str, str]:
        return parse_extradata(self.call("getextradata", vm, "enumerate"))

    # --- networks -----------------------------------------------------------------------------------

    def list_natnetworks(self) -> list[Record]:
        return parse_records(self.call("list", "natnetworks"))

    def natnetwork_add(self, name: str, network: str, *, enable: bool = True, dhcp: bool = False) -> None:
        """Add a NAT network (``network`` a CIDR; its gateway is .1). Not atomic: a refused CIDR
        leaves the network behind with VirtualBox's default 10.0.2.0/24."""
        self.call("natnetwork", "add", "--netname", name, "--network", network,
                  "--enable" if enable else "--disable", "--dhcp", "on" if dhcp else "off")

    def natnetwork_remove(self, name: str) -> None:
        self.call("natnetwork", "remove", "--netname", name)

    def list_intnets(self) -> list[Record]:
        return parse_records(self.call("list", "intnets"))

    def list_bridgedifs(self) -> list[Record]:
        return parse_records(self.call("list", "bridgedifs"))

    def list_hostonlyifs(self) -> list[Record]:
        return parse_records(self.call("list", "hostonlyifs"))

    def hostonlyif_create(self) -> str:
        """A new host-only interface (Linux, Windows; named by VirtualBox: ``vboxnet0``, …); its name."""
        out = self.call("hostonlyif", "create")
        match = _CREATED_INTERFACE.search(out)
        if not match:
            raise BackendError(f"VBoxManage hostonlyif create: no interface name in {out.strip()[:120]!r}")
        return match["name"]

    def hostonlyif_ipconfig(self, name: str, ip: str, netmask: str) -> None:
        self.call("hostonlyif", "ipconfig", name, "--ip", ip, "--netmask", netmask)

    def hostonlyif_remove(self, name: str) -> None:
        self.call("hostonlyif", "remove", name)

    # --- the host -----------------------------------------------------------------------------------

    def host_info(self) -> dict[str, str]:
        """``list hostinfo``: processor features (``Processor supports HW virtualization``), memory, OS."""
        return parse_info_lines(self.call("list", "hostinfo"))

    def system_properties(self) -> dict[str, str]:
        """``list systemproperties`` (``Default machine folder``, …)."""
        return parse_info_lines(self.call("list", "systemproperties"))

    # --- media --------------------------------------------------------------------------------------

    def list_hdds(self) -> list[Record]:
        return parse_records(self.call("list", "hdds"))

    def list_dvds(self) -> list[Record]:
        return parse_records(self.call("list", "dvds"))

    def show_medium_info(self, medium: str, kind: str = "disk") -> Record:
        """``showmediuminfo`` (registers the medium if it was not)."""
        records = parse_records(self.call("showmediuminfo", kind, medium))
        if len(records) != 1:
            raise BackendError(f"VBoxManage showmediuminfo: expected one record for {medium}, got {len(records)}")
        return records[0]

    def clone_medium(self, source: str, target: Path, fmt: str = "VDI") -> str:
        """Copy ``source`` (a qcow2, VDI, raw… path or UUID) into a new ``target``; its UUID.
        Both end up registered."""
        return parse_created_uuid(self.call("clonemedium", "disk", source, str(target), "--format", fmt))

    def create_medium(self, target: Path, size_mb: int, fmt: str = "VDI") -> str:
        return parse_created_uuid(self.call("createmedium", "disk", "--filename", str(target),
                                            "--size", str(size_mb), "--format", fmt))

    def convert_from_raw(self, source: Path, target: Path, fmt: str = "VDI") -> None:
        """A raw disk image into a new ``target`` (not registered; VBoxManage prints no UUID)."""
        self.call("convertfromraw", str(source), str(target), "--format", fmt)

    def create_diff_medium(self, parent: str, target: Path, fmt: str = "VDI") -> str:
        """A differencing disk on ``parent``; its UUID."""
        return parse_created_uuid(self.call(*diff_medium_argv(parent, target, fmt)))

    def resize_medium(self, medium: str, size_mb: int) -> None:
        """Grow a disk to ``size_mb`` MiB (VirtualBox cannot shrink)."""
        self.call("modifymedium", "disk", medium, "--resize", str(size_mb))

    def set_medium_type(self, medium: str, medium_type: str) -> None:
        """``normal``, ``immutable``, … (not on a differencing disk; ``multiattach`` only on media
        registered with a VM)."""
        self.call("modifymedium", "disk", medium, "--type", medium_type)

    def set_medium_autoreset(self, medium: str, on: bool) -> None:
        """A differencing disk made on an immutable base starts with auto-reset on: emptied at every
        VM start. A lab node's disk wants it off."""
        self.call("modifymedium", "disk", medium, "--autoreset", "on" if on else "off")

    def close_medium(self, medium: str, kind: str = "disk", *, delete: bool = False) -> None:
        """Unregister a medium (``delete``: and delete its file). Refused while it has children or
        is attached."""
        self.call("closemedium", kind, medium, *(["--delete"] if delete else []))
