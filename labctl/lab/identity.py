"""What labctl marks its hypervisor objects with, so it recognises its own (neutral: every backend
stores it its own way, libvirt in XML metadata, VirtualBox in extradata)."""

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
