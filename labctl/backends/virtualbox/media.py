"""Disks and seeds through VBoxManage: the shared immutable base per image digest, each node's
differencing disk on it, and the seed ISO.

Why it is done this way (measured on VirtualBox 7.2, /work/notes/vbox.md):

* A clone whose VBoxManage is killed completes inside VBoxSVC; one whose VBoxSVC dies leaves a partial
  file that opens as if whole. So a base is trusted only through its completion marker (global
  extradata ``labctl/base/<algo>-<hex>`` = its UUID, written last), each import clones to a name of its
  own, and the leftovers of earlier attempts are discarded before the next one.
* ``clonemedium`` registers its source: the verified image is closed again (unregistered, never deleted;
  where a VM of the user's uses it, VirtualBox refuses and it stays).
* The base is immutable, so ``unregistervm --delete`` of the last VM on it leaves it; a differencing
  disk made on an immutable base starts with auto-reset on (emptied at every VM start): turned off.
* Growing the base does not grow existing children, so each node's disk is grown to its own size;
  the base keeps the image's (it is shared by labs of any size).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from pathlib import Path

from labctl.backends.base import BaseImage
from labctl.backends.virtualbox.definition import BASE_PREFIX, base_folder, base_key, disk_mb
from labctl.backends.virtualbox.vboxmanage import Record, VBoxManage, VBoxManageError
from labctl.errors import BackendError
from labctl.lab.lock import host_lock
from labctl.lab.plan import NodePlan
from labctl.lab.state import write_private
from labctl.paths import cache_root

_MBYTES = re.compile(r"(?P<mb>\d+) MBytes")


def find_base(manage: VBoxManage, image: BaseImage) -> Record | None:
    """The complete base of ``image`` (``list hdds`` record), or None when there is none (yet)."""
    uuid = manage.get_extradata("global", BASE_PREFIX + base_key(image.digest))
    if not uuid:
        return None
    record = find_medium(manage.list_hdds(), uuid=uuid)
    return record if record is not None and record.get("State") != "inaccessible" else None


def ensure_base(manage: VBoxManage, root: Path, image: BaseImage) -> str:
    """Import ``image`` as the immutable base VDI of its digest, once per VirtualBox (and host)."""
    if image.kernel or image.initrd:
        raise BackendError(f"image {image.path.name} boots by direct kernel boot, which VirtualBox cannot do",
                           "use an image with its own boot loader (a cloud image), or backend libvirt")
    if find_base(manage, image) is not None:
        return "exists"
    # Two labs coming up at once share the base: one imports it, the other then finds it.
    lock = cache_root() / "locks" / f"vbox-base-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}"
    with host_lock(lock):
        if find_base(manage, image) is not None:
            return "exists"
        import_base(manage, root, image)
    return "imported"


def import_base(manage: VBoxManage, root: Path, image: BaseImage) -> str:
    """Convert the verified image into a new immutable VDI and mark it complete; its UUID."""
    folder = base_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"labctl-base-{base_key(image.digest)}-"
    discard_attempts(manage, folder, stem)
    target = folder / f"{stem}{secrets.token_hex(4)}.vdi"
    source = str(image.path)
    try:
        if image.format == "raw":
            manage.convert_from_raw(image.path, target)
            uuid = manage.show_medium_info(str(target))["UUID"]
        else:
            uuid = manage.clone_medium(source, target)
    finally:
        close_quietly(manage, source)  # clonemedium registered it (an earlier, interrupted one too)
    manage.set_medium_type(uuid, "immutable")
    manage.set_extradata("global", BASE_PREFIX + base_key(image.digest), uuid)
    return uuid


def discard_attempts(manage: VBoxManage, folder: Path, stem: str) -> None:
    """Best effort: the media of earlier, interrupted imports of this digest (called only while no
    complete base is marked). One that VBoxSVC is still writing goes at a later import."""
    for record in manage.list_hdds():
        location = Path(record.get("Location", ""))
        if location.parent == folder and location.name.startswith(stem):
            with contextlib.suppress(VBoxManageError):
                manage.close_medium(record["UUID"], delete=True)
    registered = {record.get("Location") for record in manage.list_hdds()}
    for leftover in folder.glob(f"{stem}*.vdi"):
        if str(leftover) not in registered:  # still registered: still being written, it goes next time
            with contextlib.suppress(OSError):
                leftover.unlink()


def close_quietly(manage: VBoxManage, medium: str, kind: str = "disk") -> None:
    """Unregister ``medium`` if VirtualBox has it (the file stays)."""
    with contextlib.suppress(VBoxManageError):
        manage.close_medium(medium, kind)


def find_medium(records: list[Record], *, uuid: str | None = None, location: str | None = None) -> Record | None:
    for record in records:
        if (uuid and record.get("UUID") == uuid) or (location and record.get("Location") == location):
            return record
    return None


def capacity_mb(record: Record) -> int | None:
    match = _MBYTES.match(record.get("Capacity", ""))
    return int(match["mb"]) if match else None


def ensure_disk(manage: VBoxManage, disk: Path, base_uuid: str, node: NodePlan) -> str:
    """The node's differencing disk on the base, auto-reset off, grown to the node's size; its UUID."""
    record = find_medium(manage.list_hdds(), location=str(disk))
    if record is not None and record.get("State") == "inaccessible":
        manage.close_medium(record["UUID"])
        record = None
    if record is None:
        with contextlib.suppress(FileNotFoundError):
            disk.unlink()  # what an interrupted createmedium left unregistered
        uuid = manage.create_diff_medium(base_uuid, disk)
        size = None
    else:
        uuid, size = record["UUID"], capacity_mb(record)
    manage.set_medium_autoreset(uuid, False)
    if size is None or size < disk_mb(node):
        manage.resize_medium(uuid, disk_mb(node))
    return uuid


def write_seed(manage: VBoxManage, seed: Path, data: bytes) -> None:
    """(Re)write the seed ISO (0600: it holds the lab's secrets), unregistering a stale copy first."""
    record = find_medium(manage.list_dvds(), location=str(seed))
    if record is not None:
        manage.close_medium(record["UUID"], "dvd")
    seed.parent.mkdir(parents=True, exist_ok=True)
    write_private(seed, data)


def delete_seed(manage: VBoxManage, seed: Path) -> bool:
    """Unregister and delete the seed ISO; False when there was none."""
    record = find_medium(manage.list_dvds(), location=str(seed))
    if record is not None:
        manage.close_medium(record["UUID"], "dvd", delete=seed.exists())
        return True
    try:
        seed.unlink()
    except FileNotFoundError:
        return False
    return True
