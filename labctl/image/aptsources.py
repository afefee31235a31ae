"""The host's apt sources (deb822 ``.sources`` and one-line ``.list``), and the sources of an image.

Parsing is pure; :func:`read_host_sources` is the one function that reads ``/etc/apt``.
``labctl image build`` uses the machine's configured Debian mirror unless ``--mirror`` is given,
so it works on hosts that reach nothing but that mirror.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from labctl.errors import ConfigError, ImageError

# Debian suites a host may name; the pockets an image follows along with its suite.
DEBIAN_CODENAMES = ("buster", "bullseye", "bookworm", "trixie", "forky", "sid")
IMAGE_POCKETS = ("", "-updates", "-security")
MIRROR_SCHEMES = ("http", "https", "file")

_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9-]*):(.*)\Z")
_POCKET = re.compile(r"(?P<codename>[a-z]+)(?P<pocket>-[a-z-]+)?\Z")


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` repository: a URI with its suites and components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...] = ("main",)

    def lines(self) -> list[str]:
        """One-line ``deb`` entries, one per suite (what mmdebstrap takes as MIRROR arguments)."""
        return [" ".join(("deb", self.uri, suite, *self.components)) for suite in self.suites]


def parse_deb822(text: str) -> list[AptSource]:
    """The enabled ``deb`` stanzas of a deb822 ``.sources`` file."""
    sources: list[AptSource] = []
    for stanza in _deb822_stanzas(text):
        if "deb" not in stanza.get("types", "").split() or stanza.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(stanza.get("suites", "").split())
        components = tuple(stanza.get("components", "").split())
        sources.extend(AptSource(uri, suites, components) for uri in stanza.get("uris", "").split())
    return sources


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = [{}]
    key = None
    for line in text.splitlines():
        if not line.strip():
            stanzas.append({})
            key = None
        elif line.startswith("#"):
            continue
        elif line[0] in " \t" and key:
            stanzas[-1][key] += " " + line.strip()
        elif match := _FIELD.match(line):
            key = match.group(1).lower()
            stanzas[-1][key] = match.group(2).strip()
    return [stanza for stanza in stanzas if stanza]


def parse_one_line(text: str) -> list[AptSource]:
    """The ``deb`` lines of a one-line-style ``sources.list``."""
    sources = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...] options
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            sources.append(AptSource(words[0], (words[1],), tuple(words[2:])))
    return sources


def read_host_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every ``deb`` source configured in ``etc_apt`` (sources.list and sources.list.d)."""
    files = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]
    sources = []
    for path in files:
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line if path.suffix == ".list" else None
        if parse is None or not path.is_file():
            continue
        try:
            sources.extend(parse(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as err:
            raise ImageError(f"cannot read apt sources {path}: {err}", "pass --mirror URL") from err
    return sources


def image_sources(host: Iterable[AptSource], suite: str) -> tuple[AptSource, ...]:
    """The host's Debian mirrors, retargeted to ``suite`` and its updates and security pockets.

    A host on bookworm with ``bookworm bookworm-updates`` on one URI and ``bookworm-security`` on
    another gives ``suite``, ``suite-updates`` and ``suite-security`` on the same URIs. Third-party
    repositories (suites that are not Debian codenames, or no ``main`` component) are left out.
    """
    seen: dict[str, list[str]] = {}
    for source in host:
        if "main" not in source.components or urlsplit(source.uri).scheme not in MIRROR_SCHEMES:
            continue
        for host_suite in source.suites:
            match = _POCKET.match(host_suite)
            if not match or match.group("codename") not in DEBIAN_CODENAMES:
                continue
            pocket = match.group("pocket") or ""
            if pocket in IMAGE_POCKETS and suite + pocket not in seen.setdefault(source.uri, []):
                seen[source.uri].append(suite + pocket)
    if not any(suite in suites for suites in seen.values()):
        raise ImageError(
            "no Debian mirror found in the host's apt sources",
            "pass --mirror URL (e.g. http://deb.debian.org/debian)",
        )
    return tuple(AptSource(uri, tuple(suites)) for uri, suites in seen.items())


def mirror_source(url: str, suite: str) -> AptSource:
    """The source for an explicit ``--mirror URL``: that mirror alone, main component of ``suite``."""
    parts = urlsplit(url)
    if parts.scheme not in MIRROR_SCHEMES or (parts.scheme != "file" and not parts.netloc) or " " in url:
        raise ConfigError("mirror", f"not a mirror URL: {url!r}", "e.g. http://deb.debian.org/debian")
    return AptSource(url.rstrip("/"), (suite,))


def resolve_sources(
    mirror: str | None, suite: str, host: Callable[[], Sequence[AptSource]] = read_host_sources
) -> tuple[AptSource, ...]:
    """``--mirror URL`` if given, else the host's configured Debian mirrors (read only then)."""
    return (mirror_source(mirror, suite),) if mirror else image_sources(host(), suite)
