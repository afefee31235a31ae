"""A test image shaped like Debian's official genericcloud image, for labs whose nodes install every
role package at first boot through apt (issue #13).

Built with labctl's own offline builder (labctl/imagebuild.py and images/customize.sh), suite
trixie, with no role daemon and no stand-in: only unattended-upgrades beyond the builder's base set.
On top of the builder's output it is laid out the way Debian's cloud images are (debian-cloud-images,
class CLOUD; cloud-init is Debian's own package):

* apt sources in deb822, ``/etc/apt/sources.list.d/debian.sources``, whose URIs are apt's mirror
  method over ``/etc/apt/mirrors/debian.list`` and ``debian-security.list``; no ``sources.list``;
* ``/etc/cloud/cloud.cfg.d/01_debian_cloud.cfg`` with ``apt: generate_mirrorlists: true``: at first
  boot cloud-init (a Debian patch) rewrites those two lists from its apt ``primary`` and
  ``security`` mirrors (else its failsafe, the public Debian mirrors) and leaves the sources alone
  (``preserve_sources_list: true``, from Debian's /etc/cloud/cloud.cfg; said again in the drop-in
  so the image does not rest on that file);
* unattended-upgrades installed with Debian's defaults: its debconf answer is "yes", so
  ``20auto-upgrades`` turns apt's daily timers into unattended upgrades, and its unit is enabled;
* systemd-resolved enabled (the builder's base does that).

python3 and python3-yaml, which the e2e probes need over ssh, come with cloud-init: nothing is
added for the tests. The mirror lists name the host's own Debian mirror (the one the image is
built from), as Debian's name the public one; cloud-init replaces them at first boot anyway.
The image is cached like the e2e image (:mod:`tests.e2e.image`), keyed by its build inputs.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from labctl.image import build as imagebuild
from labctl.image.aptsources import AptSource, read_host_sources
from labctl.image.build import BuiltImage, build_image, render_overlay_tar
from tests.e2e import image
from tests.harness.aptproxy import debian_mirrors

IMAGE_NAME = "labctl-genericcloud"  # not "labctl-e2e-…": that image's stale-build cleanup globs its name
SUITE = "trixie"
PACKAGES = ("unattended-upgrades",)
# What the nodes install at first boot instead (the e2e image pre-bakes them).
ROLE_PACKAGES = ("haproxy", "dnsmasq", "nftables", "keepalived", "containerd")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRRORS = "etc/apt/mirrors"
# The pockets of the image's suite each mirror list serves, as in Debian's debian.sources.
POCKETS = {"debian": ("", "-updates", "-backports"), "debian-security": ("-security",)}

Run = Callable[[Sequence[str]], None]
Log = Callable[[str], None]


def render_cloud_cfg() -> dict[str, Any]:
    """``/etc/cloud/cloud.cfg.d/01_debian_cloud.cfg``: the apt part of Debian's own drop-in."""
    return {"apt": {"generate_mirrorlists": True, "preserve_sources_list": True}}


def render_sources(lists: Sequence[str], suite: str = SUITE) -> str:
    """``debian.sources``: one deb822 stanza per mirror list, as Debian's cloud images have it."""
    stanzas = [
        {"Types": "deb", "URIs": f"mirror+file:///{MIRRORS}/{name}.list",
         "Suites": " ".join(suite + pocket for pocket in POCKETS[name]), "Components": "main",
         "Signed-By": KEYRING}
        for name in lists
    ]
    return "\n".join("".join(f"{key}: {value}\n" for key, value in stanza.items()) for stanza in stanzas)


def render_files(host: Sequence[AptSource], suite: str = SUITE) -> dict[str, bytes]:
    """Every file laid over the builder's image, by path in the image."""
    uris = debian_mirrors(host, suite)
    cloud_cfg = "# Debian cloud image defaults (labctl test image)\n" + yaml.safe_dump(render_cloud_cfg())
    return {
        "etc/cloud/cloud.cfg.d/01_debian_cloud.cfg": cloud_cfg.encode(),
        "etc/apt/sources.list.d/debian.sources": render_sources(list(uris), suite).encode(),
        **{f"{MIRRORS}/{name}.list": f"{uri}\n".encode() for name, uri in uris.items()},
    }


def layout_hooks(overlay_tar: Path) -> list[str]:
    """mmdebstrap hooks laying the files over the image and dropping the builder's one-line sources."""
    return [
        "--customize-hook=" + shlex.join(["tar-in", str(overlay_tar), "/"]),
        '--customize-hook=rm -f "$1"/etc/apt/sources.list',  # constant text: the path is fixed
    ]


def cloud_image(
    log: Log = print,
    run: Run = imagebuild.run_command,
    host_sources: Callable[[], Sequence[AptSource]] = read_host_sources,
) -> tuple[BuiltImage, bool]:
    """The cached genericcloud-like image, built first if needed: (image, whether it was built)."""
    files = render_files(host_sources())

    def build(directory: Path) -> BuiltImage:
        log(f"cloud image: building {directory.name} (suite {SUITE}, + {', '.join(PACKAGES)}, Debian's apt layout)")
        with tempfile.TemporaryDirectory(prefix="layout-", dir=directory.parent) as work:
            overlay = Path(work) / "layout.tar"
            overlay.write_bytes(render_overlay_tar(files))
            return build_image(IMAGE_NAME, directory, None, SUITE, PACKAGES,
                               image.with_hooks(run, layout_hooks(overlay)), host_sources=host_sources, log=log)

    key = image.cache_key(SUITE, PACKAGES, files=[Path(__file__).resolve()], extra=files)
    return image.cached_build(IMAGE_NAME, SUITE, key, build)
