"""``labctl image build``: the click layer over :mod:`labctl.image.build` (attached to the ``image`` group)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from labctl.errors import ImageError
from labctl.image import build as imagebuild
from labctl.paths import cache_root


def default_build_dir() -> Path:
    return cache_root() / "builds"


@click.command("build")
@click.argument("name")
@click.option("--mirror", metavar="URL", help="Debian mirror to build from (default: the host's apt sources).")
@click.option("--suite", type=click.Choice(imagebuild.SUPPORTED_SUITES), default=imagebuild.DEFAULT_SUITE,
              show_default=True, help="Debian release of the image.")
@click.option("--include", multiple=True, metavar="PKG",
              help="Extra package to pre-install, e.g. haproxy (repeatable; commas allowed).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for NAME.qcow2, .vmlinuz, .initrd and .json (default: <cache>/builds).")
def build_command(name: str, mirror: str | None, suite: str, include: tuple[str, ...], output: Path | None) -> None:
    """Build NAME, a cloud-init-ready Debian image, from an apt mirror alone (needs root).

    Prints the image's manifest (JSON) on stdout; progress goes to stderr.
    """
    if os.geteuid() != 0:
        raise ImageError(
            "building an image needs root",
            "mmdebstrap --mode=root keeps real file ownership for mkfs.ext4 -d; run it with sudo",
        )
    built = imagebuild.build_image(name, output or default_build_dir(), mirror, suite, include)
    click.echo(json.dumps({**built.manifest(), "manifest": str(built.manifest_path)}, indent=2))
