"""The CNI manifest of a lab: fetched on the host, verified by its SHA-256, cached like images (so an
offline host reuses it), and adapted to the lab's pod network before any VM exists."""

from __future__ import annotations

from pathlib import Path

from labctl.errors import ConfigError
from labctl.guest.cni import CniManifest, adapt_manifest, cni_manifest
from labctl.image.cache import ImageCache
from labctl.image.download import fetch, make_session
from labctl.lab.catalog import ImageSpec
from labctl.lab.plan import Plan
from labctl.paths import cache_root


def manifest_cache() -> ImageCache:
    """Verified manifests, keyed by digest like images (``cache_root()/manifests``)."""
    return ImageCache(root=cache_root() / "manifests")


def _spec(cni: CniManifest) -> ImageSpec:
    # The image downloader and cache serve any verified file: a manifest is a "raw" one.
    return ImageSpec(name=cni.cache_name, url=cni.source.url, path=cni.source.path, algo="sha256",
                     digest=cni.source.sha256, format="raw")


def cni_for_plan(plan: Plan, cache: ImageCache | None = None) -> str:
    """The lab's CNI manifest, adapted: from the cache, else downloaded (or read) and verified first."""
    cni = cni_manifest(plan)
    with make_session() as session:
        cached = fetch(_spec(cni), cache or manifest_cache(), session)
    return adapt_manifest(_text(cached.path, cni), cni, plan.lab.kubernetes.pod_cidr)


def cached_cni(plan: Plan, cache: ImageCache | None = None) -> str | None:
    """The adapted manifest if it is cached already (no network), else None: what `labctl plan` checks."""
    cni = cni_manifest(plan)
    found = (cache or manifest_cache()).find("sha256", cni.source.sha256)
    if found is None:
        return None
    return adapt_manifest(_text(found.path, cni), cni, plan.lab.kubernetes.pod_cidr)


def _text(path: Path, cni: CniManifest) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError("kubernetes.cni_manifest", f"{cni.source.where} is not UTF-8 text: {err.reason} at byte "
                          f"{err.start}", "a CNI manifest is a YAML file") from err


def cni_for_render(plan: Plan) -> tuple[str, bool]:
    """(the manifest master1's seed carries, whether it was cached): `labctl render` never downloads,
    so a manifest not cached yet is shown as a one-line YAML comment naming what `up` fetches."""
    cached = cached_cni(plan)
    if cached is not None:
        return cached, True
    cni = cni_manifest(plan)
    return (f"# not cached on this host: `labctl up` fetches {cni.source.where} (sha256 {cni.source.sha256}), "
            f"verifies it and adapts it to the pod network {plan.lab.kubernetes.pod_cidr}\n"), False
