"""The local image cache: verified base images keyed by their SHA-512.

Layout under ``cache_root()/images``::

    sha512-<hex>.qcow2        the image (or .raw), only ever renamed in once verified
    sha512-<hex>.json         its record: name, url or source, size, digests, added
    sha512-<hex>.kernel ...   extra files of a locally built image (direct kernel boot)
    partial/<name>.part       a download or import in progress (+ .part.json, .lock)

The SHA-512 is always computed, whatever the source was verified with, so every
image has one key and labs can name it as ``sha512:<hex>`` in their ``lab.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from labctl.errors import ImageError, StateError
from labctl.fsutil import atomic_write
from labctl.lab.catalog import ImageSpec
from labctl.lab.lock import host_lock
from labctl.lab.validate import suggestion
from labctl.paths import cache_root, data_root

CHUNK = 1 << 20
TRANSFER_LOCK_TIMEOUT = 6 * 3600.0  # another labctl may be downloading the same image over a slow link
_HEX = re.compile(r"[0-9a-f]+\Z")
_ROLE = re.compile(r"[a-z][a-z0-9_-]*\Z")


@dataclass(frozen=True)
class CachedImage:
    """A verified image in the cache."""

    name: str
    path: Path
    digests: Mapping[str, str]  # algorithm -> hex; always has "sha512"
    size: int
    format: str
    arch: str
    added: str
    url: str | None = None
    source: str | None = None  # the local file it was imported from
    source_mtime_ns: int | None = None
    cmdline: str | None = None
    extra_files: Mapping[str, Path] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """``sha512:<hex>``, as a lab's ``lab.json`` records it."""
        return f"sha512:{self.digests['sha512']}"

    @property
    def kernel(self) -> Path | None:
        return self.extra_files.get("kernel")

    @property
    def initrd(self) -> Path | None:
        return self.extra_files.get("initrd")

    def has_digest(self, algo: str, hexdigest: str) -> bool:
        return self.digests.get(algo) == hexdigest.lower()


class Digester:
    """Hashes a stream with SHA-512 (the cache key) plus any algorithm it is verified with."""

    def __init__(self, *algos: str | None) -> None:
        self._hashes = {algo: hashlib.new(algo) for algo in {"sha512", *(a for a in algos if a)}}

    def update(self, data: bytes) -> None:
        for h in self._hashes.values():
            h.update(data)

    def update_from_file(self, path: Path, limit: int | None = None) -> None:
        """Hash the first ``limit`` bytes of ``path`` (all of it if None)."""
        left = limit
        with path.open("rb") as fh:
            while left is None or left > 0:
                data = fh.read(CHUNK if left is None else min(CHUNK, left))
                if not data:
                    break
                self.update(data)
                left = None if left is None else left - len(data)

    def hexdigests(self) -> dict[str, str]:
        return {algo: h.hexdigest() for algo, h in sorted(self._hashes.items())}


def check_digest(digests: Mapping[str, str], algo: str, expected: str, origin: str) -> None:
    """Raise an ImageError naming ``origin`` and both digests unless they match."""
    actual = digests[algo]
    if actual != expected.lower():
        raise ImageError(
            f"{origin}: {algo} mismatch: expected {expected.lower()}, got {actual}",
            "the file is corrupt or changed upstream; nothing was cached",
        )


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON so readers see the old file or the new one, never half of one."""
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o644)


class ImageCache:
    """Verified images on disk, and which labs use them.

    ``root`` defaults to ``cache_root()/images``; ``labs_root`` (where each lab's
    ``<lab>/lab.json`` lives) to ``data_root()``.
    """

    def __init__(
        self,
        root: Path | None = None,
        labs_root: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root if root is not None else cache_root() / "images"
        self.labs_root = labs_root if labs_root is not None else data_root()
        self._clock = clock

    @property
    def partial_dir(self) -> Path:
        return self.root / "partial"

    def partial_path(self, name: str) -> Path:
        """Where a download or import of ``name`` is written until it is verified."""
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        return self.partial_dir / f"{name}.part"

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise work on ``name`` between labctl processes."""
        with host_lock(self.partial_dir / f"{name}.lock", timeout=TRANSFER_LOCK_TIMEOUT):
            yield

    def images(self) -> list[CachedImage]:
        """All cached images, by name then age. Broken records are skipped."""
        images = [image for path in self.root.glob("sha512-*.json") if (image := self._load(path))]
        return sorted(images, key=lambda image: (image.name, image.added))

    def find(self, algo: str, hexdigest: str) -> CachedImage | None:
        return next((image for image in self.images() if image.has_digest(algo, hexdigest)), None)

    def find_by_url(self, url: str) -> CachedImage | None:
        """The newest image downloaded from ``url``."""
        found = [image for image in self.images() if image.url == url]
        return max(found, key=lambda image: image.added) if found else None

    def find_by_source(self, path: Path) -> CachedImage | None:
        """The image imported from local ``path``, if that file is unchanged since."""
        try:
            stat = path.resolve().stat()
        except OSError:
            return None
        for image in self.images():
            if image.source == str(path.resolve()) and (image.size, image.source_mtime_ns) == (
                stat.st_size,
                stat.st_mtime_ns,
            ):
                return image
        return None

    def find_spec(self, spec: ImageSpec) -> CachedImage | None:
        """The cached image a lab.yaml ``image:`` names: by its digest, its local source or its URL."""
        if spec.algo and spec.digest:
            return self.find(spec.algo, spec.digest)
        if spec.path is not None:
            return self.find_by_source(spec.path)
        return self.find_by_url(str(spec.url))

    def commit(
        self,
        part: Path,
        *,
        name: str,
        digests: Mapping[str, str],
        format: str,
        arch: str,
        url: str | None = None,
        source: Path | None = None,
        cmdline: str | None = None,
        extra_files: Mapping[str, Path] | None = None,
    ) -> CachedImage:
        """Move a verified file ``part`` into the cache under its digest; record it."""
        key = f"sha512-{digests['sha512']}"
        self.root.mkdir(parents=True, exist_ok=True)
        extras = {role: self._store_extra(key, role, path) for role, path in (extra_files or {}).items()}
        final = self.root / f"{key}.{format}"
        os.replace(part, final)
        record = {
            "name": name,
            "file": final.name,
            "digests": dict(digests),
            "size": final.stat().st_size,
            "format": format,
            "arch": arch,
            "added": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="seconds"),
            "url": url,
            "source": str(source.resolve()) if source else None,
            "source_mtime_ns": source.resolve().stat().st_mtime_ns if source else None,
            "cmdline": cmdline,
            "extra_files": extras,
        }
        write_json_atomic(self.root / f"{key}.json", record)
        image = self._load(self.root / f"{key}.json")
        assert image is not None
        return image

    def add_file(
        self,
        path: Path,
        name: str,
        *,
        format: str = "qcow2",
        arch: str = "amd64",
        expected: tuple[str, str] | None = None,
        cmdline: str | None = None,
        extra_files: Mapping[str, Path] | None = None,
    ) -> CachedImage:
        """Register a local image (e.g. a locally built one), verified if ``expected``.

        ``expected`` is ``(algo, hex)``. The file is copied; a builder can avoid the
        copy by writing straight to :meth:`partial_path` and passing that path.
        ``extra_files`` maps a role (``kernel``, ``initrd``) to a file kept with it.
        """
        part = self.partial_path(name)
        in_place = path.resolve() == part.resolve()
        digester = Digester(expected[0] if expected else None)
        try:
            if in_place:
                digester.update_from_file(part)
            else:
                _copy_hashing(path, part, digester)
            if expected:
                check_digest(digester.hexdigests(), *expected, origin=str(path))
            source = None if in_place else path
            return self.commit(
                part, name=name, digests=digester.hexdigests(), format=format, arch=arch,
                source=source, cmdline=cmdline, extra_files=extra_files,
            )
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def lab_images(self) -> dict[str, str]:
        """Each lab's image digest (``algo:hex``) from ``<labs_root>/<lab>/lab.json``."""
        labs = {}
        for lab_json in sorted(self.labs_root.glob("*/lab.json")):
            try:
                data = json.loads(lab_json.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise StateError(f"cannot read {lab_json}: {err}", "fix or remove that lab's state") from err
            digest = data.get("image_digest") if isinstance(data, dict) else None
            if isinstance(digest, str):
                labs[str(data.get("name") or lab_json.parent.name)] = digest
        return labs

    def users(self, image: CachedImage, lab_images: Mapping[str, str] | None = None) -> list[str]:
        """The labs whose overlays are backed by ``image``."""
        lab_images = self.lab_images() if lab_images is None else lab_images
        return sorted(lab for lab, digest in lab_images.items() if image.has_digest(*_split_digest(digest)))

    def remove(self, ref: str) -> list[CachedImage]:
        """Remove the images called ``ref`` (or the one whose digest starts with it).

        Refused with an ImageError naming the labs if any lab uses one of them.
        """
        targets = self._select(ref)
        lab_images = self.lab_images()
        used = sorted({lab for image in targets for lab in self.users(image, lab_images)})
        if used:
            raise ImageError(
                f"image {ref} is in use by lab{'s' if len(used) > 1 else ''} {', '.join(used)}",
                "destroy those labs first",
            )
        for image in targets:
            self._delete(image)
        return targets

    def _select(self, ref: str) -> list[CachedImage]:
        images = self.images()
        named = [image for image in images if image.name == ref]
        if named:
            return named
        algo, _, prefix = ref.lower().rpartition(":")
        if len(prefix) >= 8 and _HEX.match(prefix):
            found = [
                image
                for image in images
                if any(h.startswith(prefix) for a, h in image.digests.items() if algo in ("", a))
            ]
            if len(found) > 1:
                raise ImageError(f"{ref} matches {len(found)} images", "give more digits")
            if found:
                return found
        hint = suggestion(ref, {image.name for image in images}) or "see `labctl image list`"
        raise ImageError(f"no cached image {ref!r}", hint)

    def _delete(self, image: CachedImage) -> None:
        # The record goes first: a file without a record is ignored and overwritten later.
        (self.root / f"sha512-{image.digests['sha512']}.json").unlink(missing_ok=True)
        for path in (image.path, *image.extra_files.values()):
            path.unlink(missing_ok=True)
        for suffix in (".part", ".part.json"):
            (self.partial_dir / f"{image.name}{suffix}").unlink(missing_ok=True)

    def _store_extra(self, key: str, role: str, source: Path) -> str:
        if not _ROLE.match(role):
            raise ValueError(f"invalid extra file role {role!r}")
        dest = self.root / f"{key}.{role}"
        tmp = self.partial_dir / dest.name
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source, tmp)
        except OSError as err:
            raise ImageError(f"cannot read {source}: {err.strerror or err}") from err
        os.replace(tmp, dest)
        return dest.name

    def _load(self, record_path: Path) -> CachedImage | None:
        try:
            data = json.loads(record_path.read_text(encoding="utf-8"))
            path = self.root / data["file"]
            if not path.is_file():
                return None
            return CachedImage(
                name=data["name"],
                path=path,
                digests=dict(data["digests"]),
                size=int(data["size"]),
                format=data["format"],
                arch=data.get("arch", "amd64"),
                added=data["added"],
                url=data.get("url"),
                source=data.get("source"),
                source_mtime_ns=data.get("source_mtime_ns"),
                cmdline=data.get("cmdline"),
                extra_files={role: self.root / name for role, name in (data.get("extra_files") or {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _split_digest(digest: str) -> tuple[str, str]:
    algo, _, hexdigest = digest.partition(":")
    return (algo, hexdigest) if hexdigest else ("sha512", algo)


def _copy_hashing(source: Path, dest: Path, digester: Digester) -> None:
    try:
        src = source.open("rb")
    except OSError as err:
        raise ImageError(f"cannot read image file {source}: {err.strerror or err}") from err
    with src, dest.open("wb") as out:
        while data := src.read(CHUNK):
            digester.update(data)
            out.write(data)
