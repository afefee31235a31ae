"""lab.yaml → validated :class:`~labctl.lab.model.Lab`.

Every error is a :class:`ConfigError` whose message starts with the key path,
e.g. ``nodes.worker.memory: expected MiB ≥ 512, got "2G"``.
"""

import hashlib
import re
from collections.abc import Callable, Mapping
from importlib import resources
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml

from labctl.errors import ConfigError
from labctl.lab.catalog import resolve_image
from labctl.lab.model import (
    BACKEND_NAMES,
    ETCD_TOPOLOGIES,
    ROLES,
    AptMirror,
    KubernetesSpec,
    Lab,
    ManifestSource,
    NetworkSpec,
    RoleSpec,
)
from labctl.lab.validate import choice, fail, kind, mapping, shown, string
from labctl.lab.versions import check_external_etcd, check_runtime, load_versions

DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
DNS_NAME = re.compile(r"^(?=.{1,200}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
K8S_VERSION = re.compile(r"^1\.\d{1,2}(\.\d{1,3})?$")
LAB_NAME_MAX = 20  # keeps <lab>-<node> within hostname and libvirt limits
MAX_WORKERS = 50
MAX_CONFIG_BYTES = 1 << 20

TOP_KEYS = ("name", "domain", "user", "backend", "accel", "image", "apt_mirror", "networks", "nodes", "kubernetes")
NETWORK_KEYS = {"nat": ("cidr",), "internal": ("cidr", "mode", "bridge")}
ROLE_KEYS = {
    "gateway": ("cpus", "memory", "disk"),
    "lb": ("count", "cpus", "memory", "disk"),
    "etcd": ("count", "cpus", "memory", "disk"),
    "master": ("count", "cpus", "memory", "disk"),
    "worker": ("count", "cpus", "memory", "disk"),
}
# nodes.etcd is not in the default lab.yaml (stacked has none): its defaults, with kubernetes.etcd: external.
ETCD_NODE_DEFAULTS = {"count": 3, "cpus": 1, "memory": 1024, "disk": 8}
K8S_KEYS = ("version", "pod_cidr", "service_cidr", "cni", "etcd", "enforce_minimums", "cni_manifest", "apt_url",
            "apt_key")
MIRROR_KEYS = ("url", "updates", "security")
MAX_KEY_BYTES = 64 << 10
ARMORED_KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# isolated: the host on the network (libvirt: an isolated network; VirtualBox: a host-only interface);
# bridge: onto a host bridge or interface; intnet: VirtualBox's internal network, the host not on it.
INTERNAL_MODES = ("isolated", "bridge", "intnet")
LINUX_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
HOST_INTERFACE = re.compile(r"^[^\x00-\x1f\x7f\s]([^\x00-\x1f\x7f]{0,98}[^\x00-\x1f\x7f\s])?$")
HTTP_URL = re.compile(r"^https?://[^\s'\"]+$")
# A URL the nodes use (apt sources, the repository key): it goes into their env file, which takes only these.
NODE_URL = re.compile(r"^https?://[A-Za-z0-9._:/,@=-]+$")
NODE_URL_HINT = "an http(s) URL of letters, digits and ._:/,@=- only (the nodes' scripts read it)"


def default_text() -> str:
    """The annotated default lab.yaml that ``labctl init`` writes."""
    return resources.files("labctl").joinpath("lab.yaml").read_text(encoding="utf-8")


def load_lab(path: Path | None = None, name: str | None = None, backend: str | None = None) -> Lab:
    """Load ``path`` (or the built-in default) and validate it; ``name`` overrides the lab name,
    ``backend`` the hypervisor backend (validated with it: some settings are one backend's)."""
    if path is None:
        return parse_lab(default_text(), "default lab", name, backend=backend)
    try:
        raw = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror}") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), "file is larger than 1 MiB; not a lab definition")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), f"not UTF-8 text (byte {err.start})") from err
    return parse_lab(text, str(path), name, base_dir=path.parent, backend=backend)


def parse_lab(text: str, source: str, name: str | None = None, base_dir: Path | None = None,
              backend: str | None = None) -> Lab:
    """Parse and validate lab.yaml text; defaults fill every missing key. Relative image paths
    are taken from ``base_dir`` (the lab.yaml's directory); ``name`` and ``backend`` override the file's."""
    user = _parse_yaml(text, source)
    merged = _merge(_parse_yaml(default_text(), "default lab"), user)
    if name is not None:
        merged["name"] = name
    if backend is not None:
        merged["backend"] = backend
    return _build_lab(merged, base_dir)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    if "\x00" in text:
        raise ConfigError(source, "contains NUL bytes; not a YAML lab definition")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, f"YAML syntax error{where}: {err.problem}") from err
    except yaml.YAMLError as err:
        raise ConfigError(source, f"YAML error: {' '.join(str(err).split())}") from err
    except RecursionError as err:
        raise ConfigError(source, "YAML nested too deeply") from err
    if data is None:
        raise ConfigError(source, "empty file; run `labctl init` for a starting point")
    if not isinstance(data, dict):
        raise ConfigError(source, f"expected a mapping of settings, got {kind(data)}")
    return data


def _merge(base: dict[str, Any], override: Mapping[Any, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


# --- value checkers -------------------------------------------------------------------------


def _int(value: Any, path: str, low: int, high: int, unit: str = "") -> int:
    what = f"{unit} {low}–{high}".strip() if unit else f"an integer {low}–{high}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, what if not unit else f"{unit} ≥ {low}", value)
    if value < low:
        raise fail(path, f"{unit} ≥ {low}" if unit else what, value)
    if value > high:
        raise fail(path, f"{unit} ≤ {high}" if unit else what, value)
    return value


def _cidr(value: Any, path: str) -> IPv4Network:
    if not isinstance(value, str):
        raise fail(path, "an IPv4 CIDR such as 10.1.0.0/24", value)
    try:
        return IPv4Network(value, strict=True)
    except ValueError as err:
        raise ConfigError(path, f"expected an IPv4 CIDR such as 10.1.0.0/24, got {shown(value)} ({err})") from err


# --- sections --------------------------------------------------------------------------------


def derived_cidrs(lab_name: str) -> tuple[IPv4Network, IPv4Network]:
    """Default NAT and internal /24s for a lab: derived from its name so labs do not collide."""
    slot = int.from_bytes(hashlib.sha256(lab_name.encode()).digest()[:4], "big") % 128
    return IPv4Network(f"10.213.{2 * slot}.0/24"), IPv4Network(f"10.213.{2 * slot + 1}.0/24")


def _build_lab(data: dict[str, Any], base_dir: Path | None) -> Lab:
    data = mapping(data, "", TOP_KEYS)
    name = string(data.get("name"), "name", DNS_LABEL, f"a DNS-1123 label (a-z, 0-9, -) of ≤ {LAB_NAME_MAX} chars")
    if len(name) > LAB_NAME_MAX:
        raise fail("name", f"a DNS-1123 label of ≤ {LAB_NAME_MAX} chars", name)
    domain = data.get("domain") or f"{name}.internal"
    string(domain, "domain", DNS_NAME, "a DNS domain such as k8s.internal")
    user = string(data.get("user"), "user", USER_NAME, "a POSIX user name such as lab")
    if user == "root":
        raise ConfigError("user", "must not be root; the lab user gets sudo")
    mirror = _apt_mirror(data.get("apt_mirror"))
    image = data.get("image")
    if not isinstance(image, (str, dict)) or not image:
        raise fail("image", "a catalog name or a mapping with url or path", image)
    image_spec = resolve_image(image, "image", base_dir=base_dir)
    backend = choice(data.get("backend"), "backend", BACKEND_NAMES)
    nat, internal = _networks(data.get("networks"), name, backend)
    kubernetes = _kubernetes(data.get("kubernetes"), base_dir)
    check_runtime(kubernetes.version, image_spec.name, image_spec.debian)
    if kubernetes.etcd == "external":
        check_external_etcd(image_spec.name, image_spec.debian)
    roles = _roles(data.get("nodes"), kubernetes)
    _check_overlaps(nat, internal, kubernetes)
    accel = choice(data.get("accel"), "accel", ("auto", "kvm", "tcg"))
    if accel == "tcg" and backend == "virtualbox":
        raise ConfigError("accel", "tcg is QEMU's software emulation, which VirtualBox does not have; "
                          "use auto or kvm (hardware virtualization) with backend virtualbox")
    return Lab(name, domain, user, accel, image_spec, mirror, nat, internal, roles, kubernetes, backend)


def _networks(value: Any, lab_name: str, backend: str) -> tuple[NetworkSpec, NetworkSpec]:
    section = mapping(value, "networks", ("nat", "internal"))
    nat_default, internal_default = derived_cidrs(lab_name)
    nat = mapping(section.get("nat"), "networks.nat", NETWORK_KEYS["nat"])
    internal = mapping(section.get("internal"), "networks.internal", NETWORK_KEYS["internal"])
    nat_cidr = _cidr(nat["cidr"], "networks.nat.cidr") if "cidr" in nat else nat_default
    internal_cidr = _cidr(internal["cidr"], "networks.internal.cidr") if "cidr" in internal else internal_default
    for path, cidr, longest in (("networks.nat.cidr", nat_cidr, 29), ("networks.internal.cidr", internal_cidr, 24)):
        if not 16 <= cidr.prefixlen <= longest:
            raise fail(path, f"a prefix length from /16 to /{longest}", str(cidr))
        if not cidr.is_private:
            raise fail(path, "a private range (10/8, 172.16/12, 192.168/16)", str(cidr))
    mode, bridge = _internal_mode(internal, backend)
    return NetworkSpec("nat", nat_cidr, "nat"), NetworkSpec("internal", internal_cidr, mode, bridge)


def _internal_mode(internal: dict[str, Any], backend: str) -> tuple[str, str | None]:
    """``networks.internal.mode`` and ``bridge``, checked against what the backend offers."""
    mode = choice(internal.get("mode", "isolated"), "networks.internal.mode", INTERNAL_MODES)
    if mode == "intnet" and backend != "virtualbox":
        raise ConfigError("networks.internal.mode", f"intnet is VirtualBox's internal network; with backend "
                          f"{backend} use isolated or bridge")
    bridge = internal.get("bridge")
    if mode != "bridge":
        if bridge is not None:
            raise ConfigError("networks.internal.bridge", "only valid with mode: bridge")
        return mode, None
    if backend == "virtualbox":
        # VirtualBox bridges onto any host interface, named as the host names it ("en0", "Intel(R) Ethernet …").
        return mode, string(bridge, "networks.internal.bridge", HOST_INTERFACE,
                            "the name of a host interface for mode bridge (`VBoxManage list bridgedifs`)")
    return mode, string(bridge, "networks.internal.bridge", LINUX_BRIDGE,
                        "the name of an existing host bridge (e.g. br0) for mode bridge")


def _apt_mirror(value: Any) -> AptMirror | None:
    """``apt_mirror: URL`` (the main suite only) or ``{url, updates: bool, security: URL}``."""
    if value is None:
        return None
    if isinstance(value, str):
        return AptMirror(string(value, "apt_mirror", NODE_URL, NODE_URL_HINT))
    entry = mapping(value, "apt_mirror", MIRROR_KEYS, empty_ok=False)
    updates = entry.get("updates", False)
    if not isinstance(updates, bool):
        raise fail("apt_mirror.updates", "true or false", updates)
    security = entry.get("security")
    if security is not None:
        string(security, "apt_mirror.security", NODE_URL, f"{NODE_URL_HINT}, of a debian-security mirror")
    return AptMirror(string(entry.get("url"), "apt_mirror.url", NODE_URL, NODE_URL_HINT), updates, security)


def _kubernetes(value: Any, base_dir: Path | None = None) -> KubernetesSpec:
    section = mapping(value, "kubernetes", K8S_KEYS)
    version = section.get("version")
    if isinstance(version, float):  # YAML reads 1.31 unquoted as a float
        raise fail("kubernetes.version", 'a quoted version such as "1.35"', version)
    version = string(version, "kubernetes.version", K8S_VERSION, 'a Kubernetes version such as "1.35" or "1.35.4"')
    load_versions().minor(version)
    apt_url = section.get("apt_url")
    if apt_url is not None:
        apt_url = string(apt_url, "kubernetes.apt_url", NODE_URL, f"{NODE_URL_HINT}, of a Kubernetes package "
                         "repository")
        apt_url = apt_url.rstrip("/") + "/"
    key_url, key_text = _apt_key(section.get("apt_key"), base_dir)
    enforce = section.get("enforce_minimums")
    if not isinstance(enforce, bool):
        raise fail("kubernetes.enforce_minimums", "true or false", enforce)
    return KubernetesSpec(
        version=version,
        pod_cidr=_cidr(section.get("pod_cidr"), "kubernetes.pod_cidr"),
        service_cidr=_cidr(section.get("service_cidr"), "kubernetes.service_cidr"),
        cni=choice(section.get("cni"), "kubernetes.cni", ("flannel", "calico")),
        etcd=choice(section.get("etcd"), "kubernetes.etcd", ETCD_TOPOLOGIES),
        enforce_minimums=enforce,
        cni_manifest=_cni_manifest(section.get("cni_manifest"), base_dir),
        apt_url=apt_url,
        apt_key_url=key_url,
        apt_key=key_text,
    )


def _local_path(value: Any, path: str, base_dir: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise fail(path, "a file path", value)
    file = Path(value).expanduser()
    return file if file.is_absolute() or base_dir is None else base_dir / file


def _apt_key(value: Any, base_dir: Path | None) -> tuple[str | None, str | None]:
    """``apt_key``: the URL the nodes fetch the repository's key from, or a file of the armored key
    on this host (carried to the nodes in their seeds: nothing to trust on the way)."""
    if value is None:
        return None, None
    if isinstance(value, str) and HTTP_URL.match(value):
        return string(value, "kubernetes.apt_key", NODE_URL, NODE_URL_HINT), None
    file = _local_path(value, "kubernetes.apt_key", base_dir)
    try:
        text = file.read_bytes()[: MAX_KEY_BYTES + 1].decode("ascii")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("kubernetes.apt_key", f"cannot read the key file {file}: {err}") from err
    if len(text) > MAX_KEY_BYTES or not text.lstrip().startswith(ARMORED_KEY):
        raise ConfigError("kubernetes.apt_key", f"{file} is not an armored OpenPGP public key",
                          "export it with `gpg --armor --export`")
    return None, text


def _cni_manifest(value: Any, base_dir: Path | None) -> ManifestSource | None:
    if value is None:
        return None
    entry = mapping(value, "kubernetes.cni_manifest", ("url", "path", "sha256"))
    digest = string(entry.get("sha256"), "kubernetes.cni_manifest.sha256", SHA256_HEX, "64 lowercase hex digits")
    if ("url" in entry) == ("path" in entry):
        raise ConfigError("kubernetes.cni_manifest", "needs exactly one of url or path")
    if "path" in entry:
        return ManifestSource(digest, path=_local_path(entry["path"], "kubernetes.cni_manifest.path", base_dir))
    return ManifestSource(digest, url=string(entry.get("url"), "kubernetes.cni_manifest.url", HTTP_URL,
                                             "an http(s) URL"))


def _odd_count(value: Any, path: str, low: int, why: str, what: str) -> int:
    """An odd count from ``low`` to 7: an even one tolerates no more failures than the odd one below it."""
    count = _int(value, path, low, 7)
    if count % 2 == 0:
        allowed = [str(n) for n in range(low, 8, 2)]
        raise ConfigError(path, f"expected {', '.join(allowed[:-1])} or {allowed[-1]}, got {count}: {why}, "
                                f"and {count} {what} tolerate no more failures than {count - 1}")
    return count


def _count_check(role: str) -> Callable[[Any, str], int]:
    def check(value: Any, path: str) -> int:
        if role == "master":
            return _odd_count(value, path, 1, "etcd needs a majority", "masters")
        if role == "lb":
            return _int(value, path, 1, 2)
        if role == "etcd":
            return _odd_count(value, path, 3, "a quorum is a majority", "members")
        return _int(value, path, 0, MAX_WORKERS)
    return check


def _roles(value: Any, kubernetes: KubernetesSpec) -> tuple[RoleSpec, ...]:
    section = mapping(value, "nodes", ROLES)
    specs = []
    for role in ROLES:
        path = f"nodes.{role}"
        entry = mapping(section.get(role), path, ROLE_KEYS[role])
        if role == "etcd":
            if kubernetes.etcd != "external":
                specs.append(_no_etcd_nodes(section.get(role)))
                continue
            entry = {**ETCD_NODE_DEFAULTS, **entry}
        count = _count_check(role)(entry.get("count", 1), f"{path}.count")
        min_cpus, min_memory = (2, 1700) if role == "master" and kubernetes.enforce_minimums else (1, 512)
        cpus = _int(entry.get("cpus"), f"{path}.cpus", min_cpus, 64, "vCPUs")
        memory = _int(entry.get("memory"), f"{path}.memory", min_memory, 262144, "MiB")
        disk = _int(entry.get("disk"), f"{path}.disk", 4, 2048, "GiB")
        specs.append(RoleSpec(role, count, cpus, memory, disk))
    return tuple(specs)


def _no_etcd_nodes(value: Any) -> RoleSpec:
    """With stacked etcd the members are the masters: etcd nodes of their own are a mistake, said in one line."""
    if value is not None:
        raise ConfigError("nodes.etcd", "etcd nodes need kubernetes.etcd: external; with stacked (the default) "
                                        "every master runs an etcd member")
    return RoleSpec("etcd", 0, 1, 512, 4)


def _check_overlaps(nat: NetworkSpec, internal: NetworkSpec, k8s: KubernetesSpec) -> None:
    named = [
        ("networks.nat.cidr", nat.cidr),
        ("networks.internal.cidr", internal.cidr),
        ("kubernetes.pod_cidr", k8s.pod_cidr),
        ("kubernetes.service_cidr", k8s.service_cidr),
    ]
    for i, (path, cidr) in enumerate(named):
        for other_path, other in named[:i]:
            if cidr.overlaps(other):
                raise ConfigError(path, f"{cidr} overlaps {other_path} ({other})")
