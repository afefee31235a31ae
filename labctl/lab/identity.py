"""What labctl marks its hypervisor objects with, so it recognises its own (neutral: every backend
stores it its own way, libvirt in XML metadata, VirtualBox in extradata)."""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from labctl import __version__


@dataclass(frozen=True)
class Tag:
    """The lab an object belongs to, the lab instance's id, and what the object is in it."""

    lab: str
    lab_id: str
    kind: str  # "network" or "domain" (a node's VM)
    role: str = ""
    node: str = ""
    version: str = __version__


def network_tag(lab: str, lab_id: str) -> Tag:
    return Tag(lab, lab_id, "network")


def node_tag(lab: str, lab_id: str, role: str, node: str) -> Tag:
    return Tag(lab, lab_id, "domain", role, node)


def media_pattern(lab: str, lab_ids: Iterable[str], suffixes: Iterable[str]) -> re.Pattern[str] | None:
    """Names of a lab's media, which no hypervisor tags: ``<lab>-<node>-<lab id><suffix>``; None without ids."""
    ids = sorted(lab_ids)
    if not ids:
        return None
    alternatives = "|".join(re.escape(lab_id) for lab_id in ids)
    ends = "|".join(re.escape(suffix) for suffix in suffixes)
    return re.compile(rf"^{re.escape(lab)}-[a-z0-9-]+-({alternatives})({ends})$")
