"""`labctl render`: every artifact `up` would make, written for review, without touching the lab.

The seeds and the hypervisor definitions come from the same functions `up` uses (the backend's
:meth:`~labctl.backends.base.Backend.definitions`), so names, paths and kernel lines are the ones
`up` defines. The lab's state is never created or changed: render works on a throwaway copy of it
(with fresh secrets where the lab has none yet).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labctl.backends.base import Backend, BaseImage
from labctl.guest.seed import build_seed_iso, render_seed
from labctl.lab.accel import Accel
from labctl.lab.plan import Plan
from labctl.lab.state import LabState, write_private
from labctl.pki.secrets import ensure_secrets

PLACEHOLDER_LAB_ID = "000000000000"  # a lab not made yet: `up` assigns the real id


@dataclass(frozen=True)
class Rendered:
    files: list[Path]
    throwaway: bool  # True: the lab does not exist here, its secrets and id are placeholders


def render(plan: Plan, backend: Backend, state: LabState, accel: Accel, image: BaseImage,
           directory: Path) -> Rendered:
    """Write each node's seed files and ISO, and the backend's definitions, under ``directory``."""
    throwaway = not state.exists
    lab_id = str(state.record().get("id") or PLACEHOLDER_LAB_ID)
    with tempfile.TemporaryDirectory(prefix="labctl-render-") as scratch:
        copy = LabState(state.name, Path(scratch) / state.name)
        if state.root.is_dir():
            shutil.copytree(state.root, copy.root, ignore=shutil.ignore_patterns("lock"))
        secrets = ensure_secrets(copy, plan)
        written = [_write(directory / name, text.encode())
                   for name, text in backend.definitions(plan, lab_id, accel, image).items()]
        for node in plan.nodes:
            files = render_seed(plan, node, secrets)
            written += [_write(directory / node.name / name, data) for name, data in files.items()]
            written.append(_write(directory / node.name / "seed.iso", build_seed_iso(files)))
    return Rendered(written, throwaway)


def _write(path: Path, data: bytes) -> Path:
    # Seeds carry secrets; treat every rendered file as private.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, data)
    return path
