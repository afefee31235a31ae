"""What the genericcloud-like test image (tests/e2e/cloudimage.py) lays over labctl's builder output,
checked without building it (test_aptpath_harness.py builds it and reads it with debugfs)."""

from __future__ import annotations

from pathlib import Path

import yaml

from labctl.image.aptsources import AptSource, parse_deb822
from tests.e2e.cloudimage import PACKAGES, ROLE_PACKAGES, layout_hooks, render_files
from tests.e2e.image import PACKAGES as E2E_PACKAGES

HOST = [
    AptSource("http://mirror.invalid/debian", ("bookworm", "bookworm-updates")),
    AptSource("http://mirror.invalid/debian-security", ("bookworm-security",)),
]


def test_the_layout_is_debians_deb822_sources_over_mirror_lists() -> None:
    files = render_files(HOST)
    assert files["etc/apt/mirrors/debian.list"] == b"http://mirror.invalid/debian\n"
    assert files["etc/apt/mirrors/debian-security.list"] == b"http://mirror.invalid/debian-security\n"
    sources = parse_deb822(files["etc/apt/sources.list.d/debian.sources"].decode())
    assert sources == [
        AptSource("mirror+file:///etc/apt/mirrors/debian.list", ("trixie", "trixie-updates", "trixie-backports")),
        AptSource("mirror+file:///etc/apt/mirrors/debian-security.list", ("trixie-security",)),
    ]
    cfg = yaml.safe_load(files["etc/cloud/cloud.cfg.d/01_debian_cloud.cfg"])
    assert cfg == {"apt": {"generate_mirrorlists": True, "preserve_sources_list": True}}


def test_a_host_without_a_security_mirror_gets_no_security_stanza() -> None:
    files = render_files(HOST[:1])
    assert "etc/apt/mirrors/debian-security.list" not in files
    assert b"security" not in files["etc/apt/sources.list.d/debian.sources"]


def test_the_layout_goes_in_after_the_builders_customize_script(tmp_path: Path) -> None:
    hooks = layout_hooks(tmp_path / "layout.tar")
    assert hooks == [f"--customize-hook=tar-in {tmp_path / 'layout.tar'} /",
                     '--customize-hook=rm -f "$1"/etc/apt/sources.list']


def test_no_role_daemon_is_asked_for() -> None:
    assert set(ROLE_PACKAGES) <= set(E2E_PACKAGES)  # the e2e image pre-bakes them; this one must not
    assert not set(ROLE_PACKAGES) & set(PACKAGES)

