"""The image a lab boots from: resolved, pulled or imported, verified, handed to a backend."""

from labctl.backends.base import BaseImage
from labctl.image.cache import ImageCache
from labctl.image.download import fetch, make_session
from labctl.lab.model import Lab
from labctl.progress import make_progress


def image_for_lab(lab: Lab, quiet: bool = False) -> BaseImage:
    """The verified local file of the lab's image, downloading it when it is not cached."""
    with make_session() as session:
        cached = fetch(lab.image, ImageCache(), session, make_progress(quiet=quiet))
    return BaseImage(cached.path, cached.digest, cached.format, cached.kernel, cached.initrd, cached.cmdline)
