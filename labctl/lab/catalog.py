"""The image catalog, and turning a lab.yaml ``image:`` value into an :class:`ImageSpec`.

Everything here is pure: it reads the shipped catalog but touches no network.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import yaml

from labctl.errors import ConfigError, ImageError
from labctl.lab.validate import kind, suggestion
from labctl.lab.validate import mapping as as_mapping
from labctl.paths import cache_root
from labctl.resources import data_file

HEX_LENGTHS = {"sha512": 128, "sha256": 64}
FORMATS = ("qcow2", "raw")
ARCHES = ("amd64", "arm64")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
_HEX = re.compile(r"[0-9a-f]+\Z")
_BSD_LINE = re.compile(r"(SHA512|SHA256) \((.+)\) = ([0-9A-Fa-f]+)\Z")
_SOURCES = ("url", "path")
_DIGESTS = ("sha512", "sha256", "checksums")
_KEYS = (*_SOURCES, *_DIGESTS, "name", "format", "arch", "kernel", "initrd", "cmdline", "description", "debian")
# The Debian releases an image may say it is (what its packages, containerd among them, come from).
DEBIAN_RELEASES = ("bookworm", "trixie", "forky", "sid")


@dataclass(frozen=True)
class ImageSpec:
    """Where a base image comes from and how to verify it.

    Exactly one of ``url``/``path`` is set. A URL image has either ``algo`` +
    ``digest`` or a ``checksums_url`` (a SHA512SUMS/SHA256SUMS file) from which the
    digest is read at pull time; a local path may have a digest. ``kernel``,
    ``initrd`` and ``cmdline`` are for images booted by direct kernel boot.
    """

    name: str
    url: str | None = None
    path: Path | None = None
    algo: str | None = None
    digest: str | None = None
    checksums_url: str | None = None
    format: str = "qcow2"
    arch: str = "amd64"
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    description: str = ""
    debian: str | None = None  # the Debian release it is, where known (catalog, built images, `debian:`)

    @property
    def filename(self) -> str:
        """The file name the image is published under (the URL's or path's basename)."""
        if self.url:
            return url_basename(self.url)
        assert self.path is not None
        return self.path.name

    def with_digest(self, algo: str, digest: str) -> ImageSpec:
        return dataclasses.replace(self, algo=algo, digest=digest)


@dataclass(frozen=True)
class Catalog:
    """Named images shipped with labctl, and which one a lab gets by default."""

    images: Mapping[str, ImageSpec]
    default: str

    def get(self, name: str, field: str = "image") -> ImageSpec:
        """The entry called ``name``; a ConfigError naming ``field`` if there is none."""
        try:
            return self.images[name]
        except KeyError:
            hint = suggestion(name, self.images) or "see `labctl image list --available`"
            raise ConfigError(field, f"unknown image {name!r}", hint) from None


def url_basename(url: str) -> str:
    return PurePosixPath(unquote(urlsplit(url).path)).name


def load_catalog(source: Traversable | None = None) -> Catalog:
    """Read and validate the catalog (by default the one shipped with labctl)."""
    source = source if source is not None else data_file("images", "catalog.yaml")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(str(source), f"cannot read the image catalog: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(str(source), f"invalid YAML: {err}") from err
    return parse_catalog(data, origin=str(source))


def parse_catalog(data: object, origin: str = "catalog.yaml") -> Catalog:
    """Validate catalog data (``version``, ``default``, ``images: {name: entry}``)."""
    top = as_mapping(data, origin, ("version", "default", "images"), empty_ok=False)
    entries = as_mapping(top.get("images"), f"{origin}:images", tuple(map(str, top.get("images") or ())),
                      empty_ok=False)
    images = {}
    for name, entry in entries.items():
        field = f"{origin}:images.{name}"
        _check_name(name, field)
        spec = _spec_from_mapping(as_mapping(entry, field, _KEYS, empty_ok=False), field, name=str(name))
        if spec.url is None:
            raise ConfigError(field, "catalog entries need a url")
        images[str(name)] = spec
    catalog = Catalog(images=images, default=str(top.get("default", "")))
    catalog.get(catalog.default, f"{origin}:default")
    return catalog


def resolve_image(
    value: object,
    field: str = "image",
    *,
    catalog: Catalog | None = None,
    base_dir: Path | None = None,
) -> ImageSpec:
    """Turn a lab.yaml ``image:`` value into an :class:`ImageSpec`.

    ``value`` is a catalog name, a mapping with ``url`` (+ one of ``sha512``,
    ``sha256``, ``checksums``) or ``path`` (+ optional digest), or None for the
    catalog default. Relative paths are taken from ``base_dir`` (the lab.yaml's
    directory). Errors are ConfigErrors naming ``field``.
    """
    if value is None or isinstance(value, str):
        catalog = catalog if catalog is not None else load_catalog()
        name = value if value is not None else catalog.default
        built = built_manifest(name)
        if name not in catalog.images and built.is_file():
            return _built_image(built, field)
        return catalog.get(name, field)
    if isinstance(value, Mapping):
        return _spec_from_mapping(value, field, base_dir=base_dir)
    raise ConfigError(field, f"expected an image name or a mapping with url or path, not {kind(value)}")


def built_manifest(name: str) -> Path:
    """Where `labctl image build NAME` leaves the manifest of an image built offline."""
    return cache_root() / "builds" / f"{name}.json"


def _built_image(manifest: Path, field: str) -> ImageSpec:
    """An image built by `labctl image build`, named in lab.yaml by its name, verified by its sha512."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        entry = {"name": data["name"], "path": data["file"], "format": data["format"], "sha512": data["sha512"],
                 "kernel": data["kernel"], "initrd": data["initrd"], "cmdline": data["cmdline"],
                 "debian": data.get("suite")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(field, f"unreadable image manifest {manifest}: {err}",
                          "rebuild it with `labctl image build`") from err
    return _spec_from_mapping(entry, field, base_dir=manifest.parent)


def parse_checksums(text: str, filename: str, origin: str) -> tuple[str, str]:
    """Find ``filename`` in a SHA512SUMS/SHA256SUMS file; return (algo, hex digest)."""
    for line in text.splitlines():
        bsd = _BSD_LINE.match(line.strip())
        if bsd:
            digest, name = bsd.group(3).lower(), bsd.group(2)
        else:
            parts = line.strip().split(None, 1)
            if len(parts) != 2:
                continue
            digest, name = parts[0].lower(), parts[1].lstrip("*")
        if name.removeprefix("./") != filename or not _HEX.match(digest):
            continue
        for algo, length in HEX_LENGTHS.items():
            if len(digest) == length:
                return algo, digest
    raise ImageError(f"{origin} has no checksum line for {filename}", "check the image URL")


def _spec_from_mapping(
    mapping: Mapping, field: str, *, name: str | None = None, base_dir: Path | None = None
) -> ImageSpec:
    as_mapping(mapping, field, _KEYS, empty_ok=False)
    url, path = _source(mapping, field, base_dir)
    algo, digest, checksums_url = _verification(mapping, field)
    filename = url_basename(url) if url else path.name if path else ""
    name = name or _string(mapping, "name", field) or _name_from_filename(filename)
    _check_name(name, f"{field}.name")
    kernel, initrd, cmdline = _direct_boot(mapping, field, base_dir)
    return ImageSpec(
        name=name,
        url=url,
        path=path,
        algo=algo,
        digest=digest,
        checksums_url=checksums_url,
        format=_choice(mapping, "format", FORMATS, field, "raw" if filename.endswith(".raw") else "qcow2"),
        arch=_choice(mapping, "arch", ARCHES, field, "amd64"),
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        description=_string(mapping, "description", field) or "",
        debian=_debian(mapping, field),
    )


def _source(mapping: Mapping, field: str, base_dir: Path | None) -> tuple[str | None, Path | None]:
    given = [key for key in _SOURCES if key in mapping]
    if len(given) != 1:
        raise ConfigError(field, "needs exactly one of url or path")
    if given == ["url"]:
        return _url(mapping, "url", field), None
    return None, _path(mapping, "path", field, base_dir)


def _verification(mapping: Mapping, field: str) -> tuple[str | None, str | None, str | None]:
    given = [key for key in _DIGESTS if key in mapping]
    if "url" in mapping and len(given) != 1:
        raise ConfigError(field, "an image url needs exactly one of sha512, sha256 or checksums (a SHA512SUMS URL)")
    if "path" in mapping and ("checksums" in given or len(given) > 1):
        raise ConfigError(field, "a local image path takes at most one of sha512 or sha256")
    if not given:
        return None, None, None
    if given == ["checksums"]:
        checksums_url = _url(mapping, "checksums", field)
        algo = next((a for a in HEX_LENGTHS if a in url_basename(checksums_url).lower()), None)
        return algo, None, checksums_url
    algo = given[0]
    return algo, _hex_digest(mapping[algo], algo, f"{field}.{algo}"), None


def _direct_boot(mapping: Mapping, field: str, base_dir: Path | None) -> tuple[Path | None, Path | None, str | None]:
    kernel = _path(mapping, "kernel", field, base_dir) if "kernel" in mapping else None
    initrd = _path(mapping, "initrd", field, base_dir) if "initrd" in mapping else None
    cmdline = _string(mapping, "cmdline", field)
    if kernel is None and (initrd or cmdline):
        raise ConfigError(field, "initrd and cmdline need a kernel (direct kernel boot)")
    return kernel, initrd, cmdline


def _debian(mapping: Mapping, field: str) -> str | None:
    value = _string(mapping, "debian", field)
    if value is not None and value not in DEBIAN_RELEASES:
        hint = suggestion(value, DEBIAN_RELEASES) or f"one of {', '.join(DEBIAN_RELEASES)}"
        raise ConfigError(f"{field}.debian", f"unknown Debian release {value!r}", hint)
    return value


def _hex_digest(value: object, algo: str, field: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(field, "must be a hex string (quote it in YAML)")
    digest = value.strip().lower().removeprefix(f"{algo}:")
    if len(digest) != HEX_LENGTHS[algo] or not _HEX.match(digest):
        raise ConfigError(field, f"must be {HEX_LENGTHS[algo]} hex digits, got {len(digest)} characters")
    return digest


def _url(mapping: Mapping, key: str, field: str) -> str:
    value = _string(mapping, key, field)
    parts = urlsplit(value or "")
    if parts.scheme not in ("http", "https") or not parts.netloc or not url_basename(value or ""):
        raise ConfigError(f"{field}.{key}", f"must be an http(s) URL of a file, got {value!r}")
    return str(value)


def _path(mapping: Mapping, key: str, field: str, base_dir: Path | None) -> Path:
    value = _string(mapping, key, field)
    if not value:
        raise ConfigError(f"{field}.{key}", "must be a non-empty file path")
    path = Path(value).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _string(mapping: Mapping, key: str, field: str) -> str | None:
    value = mapping.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{field}.{key}", f"must be a string, not {kind(value)}")
    return value


def _choice(mapping: Mapping, key: str, choices: tuple[str, ...], field: str, default: str) -> str:
    value = _string(mapping, key, field) or default
    if value not in choices:
        hint = suggestion(value, choices) or f"one of {', '.join(choices)}"
        raise ConfigError(f"{field}.{key}", f"unknown {key} {value!r}", hint)
    return value


def _check_name(name: object, field: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(field, f"invalid image name {name!r}", "use letters, digits, '.', '_', '+', '-'")


def _name_from_filename(filename: str) -> str:
    stem = filename
    for suffix in (".qcow2", ".raw", ".img"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip(".-_+")
    return stem[:128] if stem else "image"
