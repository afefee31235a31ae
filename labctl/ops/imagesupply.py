"""The image a lab boots from: resolved, pulled or imported, verified, handed to a backend."""

from pathlib import Path

from labctl.backends.base import BaseImage
from labctl.image.cache import CachedImage, ImageCache
from labctl.image.download import fetch, make_session
from labctl.lab.model import Lab
from labctl.progress import make_progress

UNKNOWN_DIGEST = "sha512:unknown"


def image_for_lab(lab: Lab, quiet: bool = False) -> BaseImage:
    """The verified local file of the lab's image, downloading it when it is not cached."""
    with make_session() as session:
        return _base(fetch(lab.image, ImageCache(), session, make_progress(quiet=quiet)))


def image_as_known(lab: Lab, cache: ImageCache | None = None) -> tuple[BaseImage, bool]:
    """The lab's image as far as it is known without downloading: the cached one, else what lab.yaml
    says of it (its digest may be unknown until it is pulled); (image, cached?)."""
    spec = lab.image
    found = (cache or ImageCache()).find_spec(spec)
    if found is not None:
        return _base(found), True
    digest = f"{spec.algo}:{spec.digest}" if spec.algo and spec.digest else UNKNOWN_DIGEST
    path = spec.path if spec.path is not None else Path(spec.filename)
    return BaseImage(path, digest, spec.format, spec.kernel, spec.initrd, spec.cmdline), False


def _base(cached: CachedImage) -> BaseImage:
    return BaseImage(cached.path, cached.digest, cached.format, cached.kernel, cached.initrd, cached.cmdline)
