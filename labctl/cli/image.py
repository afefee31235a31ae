"""``labctl image pull|list|rm``: the click layer over the catalog, downloads and the cache."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click
import requests

from labctl.cli.tables import table
from labctl.image.cache import CachedImage, ImageCache
from labctl.image.download import fetch, make_session
from labctl.lab.catalog import FORMATS, Catalog, ImageSpec, load_catalog, resolve_image
from labctl.progress import format_size, make_progress


@dataclass
class ImageEnv:
    """What the image commands touch; tests pass their own as ``obj``."""

    cache: ImageCache = field(default_factory=ImageCache)
    session: Callable[[], requests.Session] = make_session
    catalog: Callable[[], Catalog] = load_catalog
    sleep: Callable[[float], None] = time.sleep
    quiet: bool = False


pass_env = click.make_pass_decorator(ImageEnv)


@click.group()
@click.pass_context
def image(ctx: click.Context) -> None:
    """Base images: download and verify, list, remove."""
    if not isinstance(ctx.obj, ImageEnv):
        ctx.obj = ImageEnv(quiet=bool(getattr(ctx.obj, "quiet", False)))


@image.command()
@click.argument("name", required=False)
@click.option("--url", help="Download this image instead of a catalog entry.")
@click.option("--sha512", metavar="HEX", help="Expected SHA-512 of --url.")
@click.option("--sha256", metavar="HEX", help="Expected SHA-256 of --url.")
@click.option("--checksums", metavar="URL", help="SHA512SUMS/SHA256SUMS file listing --url's digest.")
@click.option("--as", "as_name", metavar="NAME", help="Name to cache --url under (default: from the URL).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Image format of --url (default: from the URL).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@pass_env
def pull(
    env: ImageEnv,
    name: str | None,
    url: str | None,
    sha512: str | None,
    sha256: str | None,
    checksums: str | None,
    as_name: str | None,
    fmt: str | None,
    quiet: bool,
) -> None:
    """Download and verify image NAME (default: the catalog default), or --url.

    Prints NAME, DIGEST and PATH of the cached image on stdout.
    """
    spec = _pull_spec(env, name, url, {"sha512": sha512, "sha256": sha256, "checksums": checksums}, as_name, fmt)
    progress = make_progress(quiet=quiet or env.quiet)
    with env.session() as session:
        cached = fetch(spec, env.cache, session, progress, sleep=env.sleep, refresh=True)
    click.echo(f"{cached.name}\t{cached.digest}\t{cached.path}")


def _pull_spec(
    env: ImageEnv, name: str | None, url: str | None, digests: dict[str, str | None], as_name: str | None,
    fmt: str | None,
) -> ImageSpec:
    given = {key: value for key, value in digests.items() if value}
    if url is None:
        if given or as_name or fmt:
            raise click.UsageError("--sha512, --sha256, --checksums, --as and --format go with --url")
        return resolve_image(name, "NAME", catalog=env.catalog())
    if name is not None:
        raise click.UsageError("give NAME or --url, not both")
    if len(given) != 1:
        raise click.UsageError("--url needs exactly one of --sha512, --sha256 or --checksums")
    mapping = {"url": url, **given, **({"name": as_name} if as_name else {}), **({"format": fmt} if fmt else {})}
    return resolve_image(mapping, "pull")


@image.command(name="list")
@click.option("--available", is_flag=True, help="List the catalog's images instead, marking cached ones.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_env
def list_images(env: ImageEnv, available: bool, output: str) -> None:
    """Cached images: name, digest, size and the labs that use them."""
    rows = _catalog_rows(env) if available else _cache_rows(env)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        shown = [{key: value for key, value in row.items() if key != "path"} for row in rows]
        click.echo(table([key.upper().replace("_", " ") for key in shown[0]], [_cells(row) for row in shown]), nl=False)
    elif not env.quiet:
        click.echo("no cached images; `labctl image pull` downloads the default one", err=True)


def _cache_rows(env: ImageEnv) -> list[dict]:
    lab_images = env.cache.lab_images()
    return [
        {
            "name": cached.name,
            "digest": cached.digest,
            "size": cached.size,
            "added": cached.added,
            "used_by": env.cache.users(cached, lab_images),
            "path": str(cached.path),
        }
        for cached in env.cache.images()
    ]


def _catalog_rows(env: ImageEnv) -> list[dict]:
    catalog = env.catalog()
    cached_urls = {cached.url for cached in env.cache.images()}
    return [
        {
            "name": name,
            "arch": spec.arch,
            "cached": spec.url in cached_urls,
            "default": name == catalog.default,
            "description": spec.description,
        }
        for name, spec in sorted(catalog.images.items())
    ]


def _cells(row: dict) -> list[str]:
    cells = []
    for key, value in row.items():
        if key == "digest":
            value = value[:19] + "…"  # sha512: + 12 hex digits
        elif key == "size":
            value = format_size(value)
        elif key == "added":
            value = value[:10]
        elif isinstance(value, bool):
            value = "yes" if value else ""
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        cells.append(str(value))
    return cells


@image.command(name="rm")
@click.argument("name")
@pass_env
def remove(env: ImageEnv, name: str) -> None:
    """Remove cached image NAME (or a digest prefix); refused while a lab uses it."""
    removed: list[CachedImage] = env.cache.remove(name)
    if not env.quiet:
        for cached in removed:
            click.echo(f"removed {cached.name} ({cached.digest[:19]}…, {format_size(cached.size)})", err=True)
