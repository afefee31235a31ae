"""containerd's configuration for Kubernetes nodes, one file per containerd major version (pure).

containerd 1.x reads configuration version 2 (the CRI plugin is ``io.containerd.grpc.v1.cri``);
containerd 2.x reads version 3 (CRI split into ``io.containerd.cri.v1.runtime`` and ``…images``).
Both files go to every Kubernetes node; the node installs the one for the containerd it has
(``containerd --version``) and proves the result with ``containerd config dump``.

The files hold only what labctl sets, and containerd fills in its defaults: runc through the systemd
cgroup driver (what kubelet uses), and the sandbox image of the Kubernetes minor. containerd 1.x
replaces a runtime's whole entry by what the file says of it, so every non-zero default of runc's
entry is restated (``runtime_type``, ``sandbox_mode``); 2.x merges, and gets the same for symmetry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from labctl.lab.plan import Plan
from labctl.lab.versions import load_versions

CONFIG_FILES = {1: "/etc/labctl/containerd-1.toml", 2: "/etc/labctl/containerd-2.toml"}
PAUSE_IMAGE = "registry.k8s.io/pause:{tag}"
RUNC = "io.containerd.runc.v2"
CGROUP_DRIVER = "systemd"  # runc's (SystemdCgroup) and the kubelet's (KubeletConfiguration): they must agree
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def containerd_config(plan: Plan, major: int) -> dict[str, Any]:
    """The configuration for containerd ``major`` (1 or 2) as data."""
    sandbox = PAUSE_IMAGE.format(tag=load_versions().minor(plan.lab.kubernetes.version).pause)
    runc_options = {"SystemdCgroup": CGROUP_DRIVER == "systemd"}
    if major == 1:
        cri = "io.containerd.grpc.v1.cri"
        return {"version": 2, "plugins": {cri: {
            "sandbox_image": sandbox,
            "containerd": {"runtimes": {"runc": {"runtime_type": RUNC, "sandbox_mode": "podsandbox",
                                                 "options": runc_options}}},
        }}}
    if major == 2:
        return {"version": 3, "plugins": {
            "io.containerd.cri.v1.images": {"pinned_images": {"sandbox": sandbox}},
            "io.containerd.cri.v1.runtime": {"containerd": {"runtimes": {"runc": {
                "runtime_type": RUNC, "sandboxer": "podsandbox", "options": runc_options}}}},
        }}
    raise ValueError(f"no containerd configuration for major version {major}")


def render_containerd_configs(plan: Plan) -> dict[str, str]:
    """Every node file: path -> TOML text."""
    return {path: dump_toml(containerd_config(plan, major)) for major, path in CONFIG_FILES.items()}


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML for nested tables of strings, booleans and integers (what containerd's files need)."""
    lines = ["# labctl: containerd for kubelet (systemd cgroup driver); containerd adds its defaults."]
    _table(data, (), lines)
    return "\n".join(lines) + "\n"


def _table(data: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if scalars and path:
        lines += ["", "[" + ".".join(_key(part) for part in path) + "]"]
    elif scalars:
        lines.append("")
    lines += [f"{_key(key)} = {_value(value)}" for key, value in scalars.items()]
    for key, value in tables.items():
        _table(value, (*path, key), lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    raise TypeError(f"no TOML for {type(value).__name__}")


def _string(text: str) -> str:
    if any(ord(c) < 0x20 or c in '"\\' for c in text):
        raise ValueError(f"{text!r} needs escapes this writer does not make")
    return f'"{text}"'
