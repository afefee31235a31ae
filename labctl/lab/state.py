"""A lab's state directory on the host: 0700, secrets 0600, the lab SSH key and lab.json."""

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from labctl.errors import StateError
from labctl.fsutil import atomic_write
from labctl.paths import data_root

SECRET_MODE = 0o600
DIR_MODE = 0o700


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 from the first byte on."""
    atomic_write(path, data, SECRET_MODE)


@dataclass(frozen=True)
class LabState:
    """The state directory of one lab (``~/.local/share/labctl/<lab>``)."""

    name: str
    root: Path

    @classmethod
    def for_lab(cls, name: str, base: Path | None = None) -> "LabState":
        return cls(name, (base or data_root()) / name)

    @property
    def exists(self) -> bool:
        return (self.root / "lab.json").is_file()

    def ensure(self) -> None:
        """Create the directory 0700, or tighten it; refuse one owned by somebody else."""
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            info = self.root.stat()
        except OSError as err:
            raise StateError(f"cannot create state directory {self.root}: {err.strerror}") from err
        if info.st_uid != os.getuid():
            raise StateError(f"state directory {self.root} belongs to uid {info.st_uid}, not to you")
        if stat.S_IMODE(info.st_mode) != DIR_MODE:
            os.chmod(self.root, DIR_MODE)
        self._tighten_files()

    def _tighten_files(self) -> None:
        """Secret files are 0600: fix looser ones we own, refuse ones somebody else owns."""
        for entry in self.root.iterdir():
            try:
                info = entry.lstat()
            except FileNotFoundError:
                continue  # another labctl's temporary file, renamed into place since we listed it
            if not stat.S_ISREG(info.st_mode) or not stat.S_IMODE(info.st_mode) & 0o077:
                continue
            if info.st_uid != os.getuid():
                raise StateError(f"{entry} is readable by others and belongs to uid {info.st_uid}",
                                 "remove it or fix its owner and mode (0600)")
            os.chmod(entry, SECRET_MODE)

    def record(self) -> dict[str, Any]:
        """lab.json: the lab's id (its tag in libvirt) and what it was built from."""
        path = self.root / "lab.json"
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise StateError(f"{path}: unreadable lab record ({err}); move it away to start over") from err

    def save_record(self, record: dict[str, Any]) -> None:
        self.ensure()
        write_private(self.root / "lab.json", json.dumps(record, indent=2, sort_keys=True).encode())

    def lab_id(self, known: str | None = None) -> str:
        """The lab's id: from lab.json, else ``known`` (read back from libvirt), else a new one."""
        record = self.record()
        if record.get("id"):
            return str(record["id"])
        record.update({"name": self.name, "id": known or secrets.token_hex(6)})
        self.save_record(record)
        return str(record["id"])

    @property
    def ssh_key_path(self) -> Path:
        return self.root / "id_ed25519"

    def ssh_public_key(self) -> str:
        """The lab's SSH public key (OpenSSH format); the key pair is made on first use."""
        self.ensure()
        pub = self.ssh_key_path.with_suffix(".pub")
        if not self.ssh_key_path.exists() or not pub.exists():
            key = Ed25519PrivateKey.generate()
            private = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            write_private(self.ssh_key_path, private)
            write_private(pub, public + f" labctl-{self.name}\n".encode())
        return pub.read_text().strip()
