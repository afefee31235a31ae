"""Reading a built image's file system without booting it: qemu-img to a raw file, then debugfs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def to_raw(qcow2: Path, raw: Path) -> Path:
    """The image's file system as a raw file (``raw``), for debugfs."""
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw)], check=True, timeout=600)
    return raw


def debugfs(raw: Path, request: str) -> str:
    result = subprocess.run(["debugfs", "-R", request, str(raw)], capture_output=True, text=True, check=True,
                            timeout=120)
    return result.stdout


def exists(raw: Path, path: str) -> bool:
    return "Inode:" in debugfs(raw, f"stat {path}")


def installed_packages(raw: Path) -> set[str]:
    status = debugfs(raw, "cat /var/lib/dpkg/status")
    return {
        stanza["Package"]
        for stanza in (dict(re.findall(r"^([A-Za-z-]+): (.*)$", block, re.M)) for block in status.split("\n\n"))
        if stanza.get("Status") == "install ok installed"
    }
