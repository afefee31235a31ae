"""Parsers of VBoxManage's output (VirtualBox 7): pure functions of the text.

Three formats matter (raw samples in /work/notes/vbox.md and tests/backends/virtualbox/data/):

* ``showvminfo --machinereadable``: ``key="value"`` lines; keys are quoted where they hold more than
  a word (``"virtio-0-0"="/path/disk.vdi"``), numbers are bare (``memory=2048``). Inside quotes ``\\"``
  and ``\\\\`` are escapes and a newline is literal, so one value may span lines. A few lines are
  neither (`` rec_screen0``): skipped.
* ``list hdds|natnetworks|bridgedifs|…``: ``Key:   value`` records, the values aligned on one
  column, records separated by a blank line (``list intnets`` prints one ``Name:`` line per record,
  without blank lines). A line that is not a key at that column continues the previous value (the
  second line of an ``Access Error:``).
* ``list vms``: ``"name" {uuid}`` lines; an inaccessible VM is named ``<inaccessible>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_VM_LINE = re.compile(r'"(?P<name>.*)" \{(?P<uuid>[0-9a-fA-F-]{36})\}\Z')
_RECORD_KEY = re.compile(r"(?P<key>[A-Za-z][A-Za-z0-9 ()/._-]*):(?P<pad>\s*)(?P<value>.*)\Z")
_CREATED_UUID = re.compile(r"UUID: (?P<uuid>[0-9a-fA-F-]{36})")
INACCESSIBLE = "<inaccessible>"


class ParseError(ValueError):
    """VBoxManage printed something this parser does not understand."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``7.2.22_Debianr175245`` → (7, 2, 22)."""
    match = _VERSION.match(text.strip())
    if not match:
        raise ParseError(f"not a VirtualBox version: {text.strip()[:80]!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def parse_machinereadable(text: str) -> dict[str, str]:
    """``showvminfo --machinereadable`` (and other ``key="value"`` output) as a dict."""
    values: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        if text.startswith('"', pos) or _bare_key_line(text, pos, end):
            key, pos = _token(text, pos, "=")
            value, pos = _token(text, pos + 1, "\n")
            values[key] = value
        else:
            pos = end  # a line that is no key=value (e.g. " rec_screen0")
        pos += 1
    return values


def _bare_key_line(text: str, start: int, end: int) -> bool:
    line = text[start:end]
    return "=" in line and not line[:1].isspace() and '"' not in line.split("=", 1)[0]


def _token(text: str, pos: int, stop: str) -> tuple[str, int]:
    """A quoted (escapes honoured, newlines literal) or bare token at ``pos``, ending before ``stop``;
    returns it and the position of ``stop`` (or the end of the text)."""
    if not text.startswith('"', pos):
        end = text.find(stop, pos)
        end = len(text) if end < 0 else end
        if stop == "\n":
            return text[pos:end].rstrip("\r"), end
        return text[pos:end], end
    chars: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            chars.append(text[pos + 1])
            pos += 2
        elif char == '"':
            end = text.find(stop, pos)
            return "".join(chars), len(text) if end < 0 else end
        else:
            chars.append(char)
            pos += 1
    raise ParseError(f"unterminated quoted value: {''.join(chars)[:80]!r}")


def parse_info_lines(text: str) -> dict[str, str]:
    """``Key: value`` lines whose values are not aligned (``list hostinfo``, ``list systemproperties``):
    the first value of each unindented key; headings (``Host Information:``) and indented lines skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and not key[0].isspace() and value.strip():
            values.setdefault(key.strip(), value.strip())
    return values


def parse_records(text: str) -> list[dict[str, str]]:
    """``Key:   value`` records (``list hdds``, ``list natnetworks``, ``showmediuminfo``, …)."""
    records: list[dict[str, str]] = []
    record: dict[str, str] = {}
    column = 0
    last = ""
    for line in text.splitlines():
        if not line.strip():
            record, last = _close(records, record), ""
            continue
        match = _RECORD_KEY.match(line)
        if match and (not record or _at_column(match, column)):
            if match["key"] in record:  # `list intnets`: a repeated key starts the next record
                record = _close(records, record)
            if not record:
                column = match.end("pad")
            last = match["key"]
            record[last] = match["value"].rstrip()
        elif last:
            record[last] += "\n" + line.strip()
        else:
            raise ParseError(f"a record line without a key: {line[:80]!r}")
    _close(records, record)
    return records


def _at_column(match: re.Match[str], column: int) -> bool:
    """Is this ``key:`` line a field of the record, and not a value's next line? Fields align their
    values on the record's column; a key too long for it has one space; an empty value has none."""
    long_key = len(match["pad"]) <= 1 and match.end("key") + 2 >= column
    return match.end("pad") == column or long_key or not match["value"]


def _close(records: list[dict[str, str]], record: dict[str, str]) -> dict[str, str]:
    if record:
        records.append(record)
    return {}


@dataclass(frozen=True)
class VmEntry:
    name: str  # INACCESSIBLE when VirtualBox cannot read the VM's settings file
    uuid: str

    @property
    def accessible(self) -> bool:
        return self.name != INACCESSIBLE


def parse_vm_list(text: str) -> list[VmEntry]:
    """``list vms`` / ``list runningvms``. Names may repeat: VirtualBox allows it, UUIDs are unique."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _VM_LINE.match(line.strip())
        if not match:
            raise ParseError(f"not a VM line: {line[:80]!r}")
        entries.append(VmEntry(match["name"], match["uuid"].lower()))
    return entries


def parse_extradata(text: str) -> dict[str, str]:
    """``getextradata VM enumerate``: ``Key: K, Value: V`` lines (a value's newlines come through
    as further lines; a key holding ``", Value: "`` cannot be told apart)."""
    data: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("Key: ") and ", Value: " in line:
            key, _, value = line[len("Key: "):].partition(", Value: ")
            data[key] = value
        elif key is not None:
            data[key] += "\n" + line
        elif line.strip():
            raise ParseError(f"not an extradata line: {line[:80]!r}")
    return data


def parse_extradata_value(text: str) -> str | None:
    """``getextradata VM KEY``: ``Value: V``, or ``No value set!`` (exit code 0) → None."""
    if text.strip() == "No value set!":
        return None
    if not text.startswith("Value: "):
        raise ParseError(f"not an extradata value: {text[:80]!r}")
    return text[len("Value: "):].removesuffix("\n")


def parse_created_uuid(text: str) -> str:
    """The UUID that ``createvm``, ``clonemedium`` and ``createmedium`` report on stdout."""
    match = _CREATED_UUID.search(text)
    if not match:
        raise ParseError(f"no UUID in: {text.strip()[:120]!r}")
    return match["uuid"].lower()


def mac_from_vbox(mac: str) -> str:
    """VirtualBox's ``525400A1B2C3`` → ``52:54:00:a1:b2:c3`` (the plan's form)."""
    if not re.fullmatch(r"[0-9A-Fa-f]{12}", mac):
        raise ParseError(f"not a VirtualBox MAC address: {mac!r}")
    return ":".join(mac[i:i + 2] for i in range(0, 12, 2)).lower()


# showvminfo's key naming the network of each attachment kind (``nat`` has none of its own).
_NIC_NETWORK_KEY = {
    "natnetwork": "nat-network",
    "intnet": "intnet",
    "bridged": "bridgeadapter",
    "hostonly": "hostonlyadapter",
    "hostonlynet": "hostonly-network",
    "generic": "generic",
}
_SLOT_KEY = re.compile(r"(?P<port>\d+)-(?P<device>\d+)\Z")


@dataclass(frozen=True)
class Nic:
    slot: int  # 1-based, as in --nicN
    attachment: str  # "nat", "natnetwork", "intnet", "bridged", "hostonly", …
    network: str | None  # the NAT network, internal network or host interface it is attached to
    model: str  # "virtio", "82540EM", …
    mac: str  # 52:54:00:a1:b2:c3


@dataclass(frozen=True)
class Attachment:
    controller: str
    port: int
    device: int
    medium: str  # a path, or "emptydrive"
    uuid: str | None


@dataclass(frozen=True)
class VmInfo:
    """A typed view of ``showvminfo --machinereadable``; ``values`` has every key."""

    values: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> VmInfo:
        return cls(parse_machinereadable(text))

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    @property
    def name(self) -> str:
        return self.values["name"]

    @property
    def uuid(self) -> str:
        return self.values["UUID"].lower()

    @property
    def state(self) -> str:
        """``poweroff``, ``running``, ``saved``, ``aborted``, …"""
        return self.values["VMState"]

    @property
    def memory(self) -> int:
        return int(self.values["memory"])

    @property
    def cpus(self) -> int:
        return int(self.values["cpus"])

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(group for group in self.values.get("groups", "").split(",") if group)

    def nics(self) -> list[Nic]:
        """The NICs that are attached to something (``nicN`` not ``none``), by slot."""
        nics = []
        for slot in range(1, 1 + sum(1 for key in self.values if re.fullmatch(r"nic\d+", key))):
            attachment = self.values.get(f"nic{slot}", "none")
            if attachment == "none":
                continue
            network_key = _NIC_NETWORK_KEY.get(attachment)
            nics.append(Nic(
                slot=slot,
                attachment=attachment,
                network=self.values.get(f"{network_key}{slot}") if network_key else None,
                model=self.values.get(f"nictype{slot}", ""),
                mac=mac_from_vbox(self.values[f"macaddress{slot}"]),
            ))
        return nics

    def controllers(self) -> dict[str, str]:
        """Storage controller name → type (``VirtioSCSI``, ``PIIX4``, ``IntelAhci``, …)."""
        names = {key.removeprefix("storagecontrollername"): value for key, value in self.values.items()
                 if key.startswith("storagecontrollername")}
        return {name: self.values.get(f"storagecontrollertype{index}", "") for index, name in names.items()}

    def attachments(self) -> list[Attachment]:
        """What is in each controller's slots (empty slots, ``none``, left out)."""
        found = []
        for controller in self.controllers():
            prefix = f"{controller}-"
            for key, medium in self.values.items():
                slot = _SLOT_KEY.match(key[len(prefix):]) if key.startswith(prefix) else None
                if slot and medium != "none":
                    port, device = int(slot["port"]), int(slot["device"])
                    uuid = self.values.get(f"{controller}-ImageUUID-{port}-{device}")
                    found.append(Attachment(controller, port, device, medium, uuid.lower() if uuid else None))
        return found

    def uart(self, slot: int = 1) -> tuple[str, str] | None:
        """(``0x03f8,4``, ``file,/path/console.log``) for a configured serial port, else None."""
        port = self.values.get(f"uart{slot}", "off")
        return None if port == "off" else (port, self.values.get(f"uartmode{slot}", ""))
