"""The Kubernetes version table (images/kubernetes.yaml): one row per minor, read by the core.

Everything tied to a minor comes from its row: the kubeadm configuration API, the oldest containerd
it supports, the end of its upstream support, the sandbox image and the CNI releases. Pure: it reads
the shipped table, never the network; "today" is passed in where it matters.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from labctl.errors import ConfigError
from labctl.resources import read_text

Pair = tuple[int, int]
_PAIR = re.compile(r"^(\d+)\.(\d+)$")
TABLE_FILE = "kubernetes.yaml"


@dataclass(frozen=True)
class Minor:
    """One Kubernetes minor and what it needs."""

    name: str  # "1.35"
    kubeadm_api: str  # kubeadm.k8s.io/v1beta4
    containerd: Pair  # the oldest containerd (major, minor) it supports
    end_of_support: datetime.date
    pause: str  # the sandbox image's tag kubeadm expects
    cni: Mapping[str, str]  # CNI name -> release (a key of network/cni.yaml)

    @property
    def needs(self) -> str:
        return "containerd ≥ " + shown(self.containerd)


@dataclass(frozen=True)
class VersionTable:
    default: str
    minors: Mapping[str, Minor]
    debian: Mapping[str, Pair]  # Debian codename -> containerd (major, minor) it ships

    def minor(self, version: str, field: str = "kubernetes.version") -> Minor:
        """The row of ``version`` ("1.35" or "1.35.2"); a ConfigError naming ``field`` if there is none."""
        name = ".".join(version.split(".")[:2])
        try:
            return self.minors[name]
        except KeyError:
            known = sorted(self.minors, key=pair)
            raise ConfigError(field, f"{version} is not in labctl's version table ({known[0]} to {known[-1]})",
                              f'the default is "{self.default}"') from None


def pair(text: str) -> Pair:
    match = _PAIR.match(text)
    if not match:
        raise ValueError(f"not a major.minor version: {text!r}")
    return int(match[1]), int(match[2])


def shown(version: Pair) -> str:
    return f"{version[0]}.{version[1]}"


@functools.cache
def load_versions() -> VersionTable:
    """The shipped table (images/kubernetes.yaml), validated."""
    return parse_versions(yaml.safe_load(read_text("images", TABLE_FILE)))


def parse_versions(data: Any, origin: str = TABLE_FILE) -> VersionTable:
    try:
        minors = {str(name): _minor(str(name), row) for name, row in data["minors"].items()}
        debian = {str(name): pair(str(row["containerd"])) for name, row in data["debian"].items()}
        default = str(data["default"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(origin, f"malformed version table: {err}") from err
    if default not in minors:
        raise ConfigError(origin, f"default {default} has no row")
    return VersionTable(default, minors, debian)


def _minor(name: str, row: Mapping[str, Any]) -> Minor:
    pair(name)
    end = row["end_of_support"]
    if not isinstance(end, datetime.date):
        raise ValueError(f"{name}: end_of_support is not a date")
    return Minor(name, str(row["kubeadm_api"]), pair(str(row["containerd"])), end, str(row["pause"]),
                 {str(k): str(v) for k, v in row["cni"].items()})


# etcd's major.minor in each Debian release: the nodes install "<it>.*" and hold it. On a release not
# listed here (or an image whose release is not known) etcd-client is installed as the release has it,
# unpinned. An external etcd runs EXTERNAL_ETCD (its configuration file and etcdutl are 3.5's).
ETCD_BY_DEBIAN = {"bookworm": "3.4", "trixie": "3.5"}
EXTERNAL_ETCD = "3.5"


def check_external_etcd(image_name: str, debian: str | None) -> None:
    """Refuse an external etcd on an image whose Debian release carries another etcd (one line)."""
    has = ETCD_BY_DEBIAN.get(debian or "")
    if has is not None and has != EXTERNAL_ETCD:
        raise ConfigError("kubernetes.etcd", f"external etcd runs etcd {EXTERNAL_ETCD}, but image {image_name} "
                          f"(Debian {debian}) has etcd {has}",
                          "use etcd: stacked, or an image of Debian trixie (the default image)")


def check_runtime(version: str, image_name: str, debian: str | None, table: VersionTable | None = None) -> None:
    """Refuse a minor whose containerd the image's Debian release does not carry (one line, the ways out).

    An image whose Debian release is not known (a user's own URL or file without ``debian:``) is
    not judged: labctl cannot tell what it ships."""
    table = table or load_versions()
    minor = table.minor(version)
    if debian is None or debian not in table.debian:
        return
    has = table.debian[debian]
    if has >= minor.containerd:
        return
    runnable = [m for m in table.minors.values() if m.containerd <= has]
    newest = max(runnable, key=lambda m: pair(m.name)).name if runnable else None
    carriers = sorted((name for name, ships in table.debian.items() if ships >= minor.containerd),
                      key=lambda name: table.debian[name])
    ways = [f'kubernetes.version: "{newest}"'] if newest else []
    if carriers:
        ways.append(f"an image of Debian {carriers[0]} (containerd {shown(table.debian[carriers[0]])}): "
                    f"`labctl image build NAME --suite {carriers[0]}`, then image: NAME")
    raise ConfigError("kubernetes.version",
                      f"Kubernetes {minor.name} needs {minor.needs}, but image {image_name} (Debian {debian}) "
                      f"has containerd {shown(has)}", "use " + " or ".join(ways))


def support_warnings(version: str, today: datetime.date, table: VersionTable | None = None) -> list[str]:
    """One line for a minor past its end of upstream support (a warning, never a refusal)."""
    table = table or load_versions()
    minor = table.minor(version)
    if today <= minor.end_of_support:
        return []
    return [f"kubernetes.version: Kubernetes {minor.name} is past its end of upstream support "
            f"({minor.end_of_support.isoformat()}); the default is \"{table.default}\""]
