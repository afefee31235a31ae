"""NoCloud seeds: contents rendered from the plan (pure), and the ISO written with pycdlib."""

import io
import struct
import time
from collections.abc import Mapping
from typing import Any

import pycdlib
import pycdlib.dates
import yaml

from labctl.errors import LabError
from labctl.guest.cloudconfig import role_config
from labctl.guest.roles import NIC_NAMES
from labctl.guest.yamltext import LiteralDumper
from labctl.lab.plan import NodePlan, Plan
from labctl.pki.secrets import LabSecrets
from labctl.resources import read_text

SEED_FILES = ("meta-data", "user-data", "network-config")
FIXED_EPOCH = 946684800  # 2000-01-01T00:00:00Z: every timestamp in a seed ISO


def dump_yaml(data: Mapping[str, Any], header: str = "") -> str:
    return header + yaml.dump(dict(data), Dumper=LiteralDumper, sort_keys=False, default_flow_style=False, width=1000)


def render_meta_data(node: NodePlan) -> str:
    # A stable instance-id: cloud-init must not re-run first-boot modules after the seed is removed.
    return dump_yaml({"instance-id": node.uuid, "local-hostname": node.name})


def render_network_config(plan: Plan, node: NodePlan) -> str:
    """network-config v2: every NIC matched by its planned MAC, static address, route via the gateway."""
    nat_host = plan.network("nat").host_address
    ethernets: dict[str, Any] = {}
    for nic in node.nics:
        name = NIC_NAMES[nic.network]
        entry: dict[str, Any] = {
            "match": {"macaddress": nic.mac},
            "set-name": name,
            "addresses": [str(nic.address)],
        }
        via = _default_route(plan, node, nic.network, nat_host)
        if via:
            entry["routes"] = [{"to": "0.0.0.0/0", "via": via}]
        nameservers = _nameservers(plan, node, nic.network, via)
        if nameservers:
            entry["nameservers"] = nameservers
        ethernets[name] = entry
    return dump_yaml({"version": 2, "ethernets": ethernets})


def _nameservers(plan: Plan, node: NodePlan, network: str, via: str | None) -> dict[str, Any] | None:
    """Lab names come from the gateway's dnsmasq, for the gateway itself too: its internal NIC names its
    own address with the lab's domain (systemd-resolved sends the domain's names there), and its NAT NIC
    names the NAT network's host for everything else, which also serves it before dnsmasq is installed."""
    if node.role == "gateway" and network == "internal":
        return {"addresses": [str(plan.gateway_address)], "search": [plan.lab.domain]}
    if node.role == "gateway":
        return {"addresses": [via]} if via else None
    return {"addresses": [via], "search": [plan.lab.domain]} if via else None


def _default_route(plan: Plan, node: NodePlan, network: str, nat_host: Any) -> str | None:
    if node.role == "gateway":
        return str(nat_host.ip) if network == "nat" and nat_host else None
    return str(plan.gateway_address) if network == "internal" else None


def render_user_data(plan: Plan, node: NodePlan, secrets: LabSecrets) -> str:
    """The #cloud-config of ``node``: common settings, hostname, the lab user with the lab key only,
    and what its role writes and runs on first boot (:func:`labctl.guest.cloudconfig.role_config`)."""
    data: dict[str, Any] = yaml.safe_load(read_text("cloud-init", "common.yaml"))
    data.update(
        {
            "hostname": node.name,
            "fqdn": node.fqdn,
            "users": [
                {
                    "name": plan.lab.user,
                    "gecos": f"labctl {plan.lab.name} lab user",
                    "groups": ["sudo"],
                    "sudo": "ALL=(ALL) NOPASSWD:ALL",
                    "shell": "/bin/bash",
                    "lock_passwd": True,
                    "ssh_authorized_keys": [secrets.ssh_user_key.public],
                }
            ],
        }
    )
    role = role_config(plan, node, secrets)
    clash = sorted(data.keys() & role.keys())
    if clash:
        raise LabError(f"role content of {node.name} would override common user-data keys: {', '.join(clash)}")
    data.update(role)
    return dump_yaml(data, "#cloud-config\n")


def render_seed(plan: Plan, node: NodePlan, secrets: LabSecrets) -> dict[str, bytes]:
    """The three NoCloud files of ``node``, by file name. user-data carries secrets: keep it private."""
    return {
        "meta-data": render_meta_data(node).encode(),
        "user-data": render_user_data(plan, node, secrets).encode(),
        "network-config": render_network_config(plan, node).encode(),
    }


def _pin_dates(iso: pycdlib.PyCdlib, seconds: int = FIXED_EPOCH) -> int:
    """Set every date the ISO will carry (volume descriptors, directory records, Rock Ridge times) to
    ``seconds`` UTC, so equal files give byte-identical ISOs; how many dates were set.

    pycdlib stamps records with the current local time as it creates them; the dates are found by
    walking the objects reachable from ``iso`` (pycdlib's own, with ``__slots__``) before it writes."""
    when = time.gmtime(seconds)
    stamp = _volume_date(seconds)
    pinned, seen = 0, set()
    todo: list[object] = [iso]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, bytearray, int, float, io.IOBase)) or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, pycdlib.dates.DirectoryRecordDate):
            obj.years_since_1900, obj.month, obj.day_of_month = when.tm_year - 1900, when.tm_mon, when.tm_mday
            obj.hour, obj.minute, obj.second, obj.gmtoffset = when.tm_hour, when.tm_min, when.tm_sec, 0
            pinned += 1
        elif isinstance(obj, pycdlib.dates.VolumeDescriptorDate):
            if obj.date_str != pycdlib.dates.VolumeDescriptorDate.EMPTY_STRING:  # "not specified" stays so
                obj.year, obj.month, obj.dayofmonth = when.tm_year, when.tm_mon, when.tm_mday
                obj.hour, obj.minute, obj.second = when.tm_hour, when.tm_min, when.tm_sec
                obj.hundredthsofsecond, obj.gmtoffset, obj.date_str = 0, 0, stamp
                pinned += 1
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            todo.extend(obj)
        elif type(obj).__module__.startswith("pycdlib"):
            todo.extend(getattr(obj, name, None) for name in _attribute_names(type(obj)))
    return pinned


def _volume_date(seconds: int) -> bytes:
    """A volume descriptor date (17 bytes: YYYYMMDDhhmmss, hundredths, GMT offset) of ``seconds`` UTC."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(seconds)).encode() + b"00" + struct.pack("=b", 0)


def _attribute_names(cls: type) -> list[str]:
    names = [name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())]
    return names or list(getattr(cls, "__annotations__", {}))


def build_seed_iso(files: Mapping[str, bytes]) -> bytes:
    """A NoCloud ``cidata`` ISO (ISO9660 level 3 + Joliet + Rock Ridge) holding ``files``."""
    iso = pycdlib.PyCdlib()
    out = io.BytesIO()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name in sorted(files):
        data = files[name]
        iso_name = "/" + name.upper().replace("-", "_")[:8] + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path="/" + name)
    _pin_dates(iso)
    iso.write_fp(out)
    iso.close()
    return _pin_modification_dates(out.getbuffer())


# ECMA-119: volume descriptors from sector 16 (type byte first; 1 primary, 2 supplementary such as
# Joliet's, 255 the set terminator), each with its Volume Modification Date at bytes 830-846.
SECTOR = 2048
VD_FIRST_SECTOR = 16
VD_MODIFIED = slice(830, 847)


def _pin_modification_dates(image: memoryview, seconds: int = FIXED_EPOCH) -> bytes:
    """pycdlib stamps each volume descriptor's modification date as it writes it: set those too."""
    stamp = _volume_date(seconds)
    data = bytearray(image)
    offset = VD_FIRST_SECTOR * SECTOR
    while offset + SECTOR <= len(data) and data[offset] != 255:
        if data[offset] in (1, 2):
            data[offset + VD_MODIFIED.start:offset + VD_MODIFIED.stop] = stamp
        offset += SECTOR
    return bytes(data)


def read_seed_iso(data: bytes) -> dict[str, bytes]:
    """Read a seed ISO back (Rock Ridge names), for tests and `labctl render` checks."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    files = {}
    try:
        for child in iso.list_children(rr_path="/"):
            if child.is_file():
                name = child.rock_ridge.name().decode()
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path="/" + name)
                files[name] = buf.getvalue()
    finally:
        iso.close()
    return files
