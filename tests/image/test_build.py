"""Image build planning (apt sources, packages, argv lists, overlay, manifest) and the executor
with a recording ``run`` in place of mmdebstrap, mkfs.ext4 and qemu-img."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from labctl.cli import imagebuild as cli_imagebuild
from labctl.errors import ConfigError, ImageError
from labctl.image import build as imagebuild
from labctl.image.aptsources import (
    AptSource,
    image_sources,
    mirror_source,
    parse_deb822,
    parse_one_line,
    read_host_sources,
    resolve_sources,
)
from labctl.image.build import (
    BASE_PACKAGES,
    CUSTOMIZE_HOOK,
    KERNEL_CMDLINE,
    build_image,
    disk_size_for,
    mkfs_argv,
    mmdebstrap_argv,
    plan_image,
    plan_packages,
    read_manifest,
    render_image_files,
    render_overlay_tar,
    run_command,
)
from labctl.lab.catalog import resolve_image
from labctl.resources import data_file

REPO = Path(__file__).resolve().parents[2]

# The host's /etc/apt/sources.list.d/debian.sources, as Debian 12 containers ship it.
HOST_DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
HOST = parse_deb822(HOST_DEB822)
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"


# --- apt sources ---------------------------------------------------------------------------


def test_deb822_stanzas_with_comments_and_signed_by():
    assert HOST == [
        AptSource(MIRROR, ("bookworm", "bookworm-updates"), ("main",)),
        AptSource(SECURITY, ("bookworm-security",), ("main",)),
    ]


def test_deb822_skips_deb_src_disabled_stanzas_and_joins_continuation_lines():
    text = (
        "Types: deb-src\nURIs: http://a/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://b/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb deb-src\nURIs: http://c/debian\n  http://d/debian\nSuites: trixie\nComponents: main contrib\n"
    )
    assert parse_deb822(text) == [
        AptSource("http://c/debian", ("trixie",), ("main", "contrib")),
        AptSource("http://d/debian", ("trixie",), ("main", "contrib")),
    ]


def test_one_line_sources_with_options_and_comments():
    text = (
        "# comment\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://m/debian bookworm main contrib # tail\n"
        "deb-src http://m/debian bookworm main\n"
        "deb http://m/debian-security bookworm-security main\n"
    )
    assert parse_one_line(text) == [
        AptSource("http://m/debian", ("bookworm",), ("main", "contrib")),
        AptSource("http://m/debian-security", ("bookworm-security",), ("main",)),
    ]


def test_read_host_sources_reads_both_formats_and_ignores_other_files(tmp_path):
    (tmp_path / "sources.list.d").mkdir(parents=True)
    (tmp_path / "sources.list").write_text("deb http://legacy/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(HOST_DEB822)
    (tmp_path / "sources.list.d" / "node.sources.disabled-by-farm").write_text(HOST_DEB822.replace("deb.", "x."))
    sources = read_host_sources(tmp_path)
    assert [s.uri for s in sources] == ["http://legacy/debian", MIRROR, SECURITY]


def test_image_sources_follow_the_host_mirror_for_another_suite():
    assert image_sources(HOST, "trixie") == (
        AptSource(MIRROR, ("trixie", "trixie-updates")),
        AptSource(SECURITY, ("trixie-security",)),
    )
    lines = [line for source in image_sources(HOST, "bookworm") for line in source.lines()]
    assert lines == [
        f"deb {MIRROR} bookworm main",
        f"deb {MIRROR} bookworm-updates main",
        f"deb {SECURITY} bookworm-security main",
    ]


def test_image_sources_leave_out_third_party_repositories_and_backports():
    host = [
        *HOST,
        AptSource("https://deb.nodesource.com/node_20.x", ("nodistro",), ("main",)),
        AptSource("https://download.docker.com/linux/debian", ("bookworm",), ("stable",)),
        AptSource(MIRROR, ("bookworm-backports",), ("main",)),
    ]
    assert image_sources(host, "trixie") == image_sources(HOST, "trixie")


def test_no_debian_mirror_on_the_host_asks_for_one():
    with pytest.raises(ImageError, match="no Debian mirror") as err:
        image_sources([AptSource("https://deb.nodesource.com/node_20.x", ("nodistro",))], "trixie")
    assert "--mirror" in str(err.value)


def test_an_explicit_mirror_is_used_alone():
    assert resolve_sources("http://mirror.lan/debian/", "trixie", pytest.fail) == (
        AptSource("http://mirror.lan/debian", ("trixie",)),
    )  # the host's sources are not even read
    assert resolve_sources(None, "trixie", lambda: HOST) == image_sources(HOST, "trixie")


@pytest.mark.parametrize("url", ["deb.debian.org/debian", "ftp://m/debian", "http://", "http://m/deb ian"])
def test_a_bad_mirror_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match=r"^mirror: not a mirror URL"):
        mirror_source(url, "trixie")


# --- plan ----------------------------------------------------------------------------------


def test_packages_are_the_base_set_then_extras_once():
    packages = plan_packages(["haproxy", "dnsmasq,containerd", "haproxy", "cloud-init"])
    assert packages[: len(BASE_PACKAGES)] == BASE_PACKAGES
    assert packages[len(BASE_PACKAGES) :] == ("haproxy", "dnsmasq", "containerd")
    for needed in ("linux-image-cloud-amd64", "cloud-init", "openssh-server", "sudo", "locales", "e2fsprogs"):
        assert needed in packages


@pytest.mark.parametrize("bad", ["--allow-downgrades", "Haproxy", "foo bar", "a", "pkg;rm"])
def test_an_extra_that_is_not_a_package_name_is_refused(bad):
    with pytest.raises(ConfigError, match=r"^include: not a Debian package name"):
        plan_packages([bad])


def test_a_mistyped_suite_gets_a_suggestion():
    with pytest.raises(ConfigError, match="unsupported suite 'trixy'") as err:
        plan_image("img", "trixy", [], host_sources=pytest.fail)
    assert "did you mean 'trixie'?" in str(err.value)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-x", "x y"])
def test_image_names_are_file_name_safe(name):
    with pytest.raises(ConfigError, match=r"^name: invalid image name"):
        plan_image(name, "trixie", [], host_sources=pytest.fail)


def test_mmdebstrap_argv():
    plan = plan_image("lab", "trixie", ["haproxy"], host_sources=lambda: HOST)
    argv = mmdebstrap_argv(plan, Path("/w/rootfs"), Path("/w dir/overlay.tar"))
    assert argv[:4] == ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory"]
    assert argv[4] == "--include=" + ",".join((*BASE_PACKAGES, "haproxy"))
    # The overlay path is quoted for mmdebstrap's shellwords; the shell hook is a constant.
    assert argv[5] == "--customize-hook=tar-in '/w dir/overlay.tar' /"
    assert shlex.split(argv[5].partition("=")[2]) == ["tar-in", "/w dir/overlay.tar", "/"]
    assert argv[6] == "--customize-hook=" + CUSTOMIZE_HOOK == '--customize-hook=chroot "$1" /bin/sh ' + (
        "/tmp/labctl-customize.sh"
    )
    assert argv[7:] == [
        "trixie",
        "/w/rootfs",
        f"deb {MIRROR} trixie main",
        f"deb {MIRROR} trixie-updates main",
        f"deb {SECURITY} trixie-security main",
    ]


def test_mkfs_and_disk_size():
    assert mkfs_argv(Path("/w/rootfs"), Path("/w/x.raw"), 2 << 30) == [
        "mkfs.ext4", "-q", "-F", "-L", "labctl-root", "-d", "/w/rootfs", "/w/x.raw", "2097152k",
    ]
    assert disk_size_for(500 << 20) == 2 << 30  # at least 2 GiB
    assert disk_size_for(3 << 30) == 4 << 30  # 3 GiB * 1.25 + 256 MiB
    assert disk_size_for(5 << 29) == 7 << 29  # 2.5 GiB * 1.25 + 256 MiB = 3.375 GiB, up to 256 MiB steps


def test_kernel_command_line_finds_the_root_by_label_and_uses_the_serial_console():
    assert KERNEL_CMDLINE.split() == ["root=LABEL=labctl-root", "ro", "console=tty0", "console=ttyS0,115200n8"]
    fstab = render_image_files()["etc/fstab"].decode().split()
    assert fstab[:3] == ["LABEL=labctl-root", "/", "ext4"]


def test_image_files():
    files = render_image_files()
    cfg = yaml.safe_load(files["etc/cloud/cloud.cfg.d/90_labctl.cfg"])
    assert cfg["datasource_list"] == ["NoCloud", "None"]
    assert cfg["growpart"] == {"mode": "off"}  # the string, not YAML's boolean
    assert files["etc/hostname"] == b"localhost\n"
    assert files["etc/default/locale"] == b"LANG=C.UTF-8\n"
    assert files["tmp/labctl-customize.sh"] == (REPO / "images" / "customize.sh").read_bytes()


def test_overlay_tar_has_files_only_root_owned():
    files = render_image_files()
    with tarfile.open(fileobj=io.BytesIO(render_overlay_tar(files))) as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == sorted(files)
        assert all(m.isfile() and m.uid == 0 and m.gid == 0 for m in members)
        modes = {m.name: m.mode for m in members}
        assert modes["tmp/labctl-customize.sh"] == 0o755 and modes["etc/fstab"] == 0o644
        extracted = tar.extractfile("etc/hosts")
        assert extracted is not None and extracted.read() == files["etc/hosts"]


def test_customize_script_passes_shellcheck():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    script = Path(str(data_file("images", "customize.sh")))
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- executor with a recording run ---------------------------------------------------------


class FakeTools:
    """Stands in for mmdebstrap, mkfs.ext4 and qemu-img: records argv, makes the files they would."""

    def __init__(self, kernels: tuple[str, ...] = ("6.12.1-cloud-amd64",)) -> None:
        self.calls: list[list[str]] = []
        self.kernels = kernels
        self.overlay: bytes = b""

    def __call__(self, argv):
        self.calls.append(list(argv))
        if argv[0] == "mmdebstrap":
            overlay = shlex.split(argv[5].partition("=")[2])[1]
            self.overlay = Path(overlay).read_bytes()
            boot = Path(argv[8]) / "boot"  # options, suite, then the target directory
            boot.mkdir(parents=True)
            for version in self.kernels:
                (boot / f"vmlinuz-{version}").write_bytes(b"kernel " + version.encode())
                (boot / f"initrd.img-{version}").write_bytes(b"initrd " + version.encode())
        elif argv[0] == "mkfs.ext4":
            Path(argv[-2]).write_bytes(b"ext4")
        elif argv[0] == "qemu-img":
            Path(argv[-1]).write_bytes(b"qcow2 of " + Path(argv[-2]).read_bytes())


def test_build_image_runs_the_three_tools_and_publishes_a_manifest(tmp_path):
    tools, logged = FakeTools(), []
    built = build_image(
        "lab", tmp_path, None, "trixie", ["haproxy"], tools, host_sources=lambda: HOST, log=logged.append
    )
    assert [call[0] for call in tools.calls] == ["mmdebstrap", "mkfs.ext4", "qemu-img"]
    assert tools.overlay == render_overlay_tar(render_image_files())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.initrd", "lab.json", "lab.qcow2", "lab.vmlinuz"]
    assert built.path.read_bytes() == b"qcow2 of ext4"
    assert built.kernel.read_bytes() == b"kernel 6.12.1-cloud-amd64"
    manifest = json.loads((tmp_path / "lab.json").read_text())
    assert manifest == {
        "name": "lab",
        "format": "qcow2",
        "arch": "amd64",
        "file": "lab.qcow2",
        "kernel": "lab.vmlinuz",
        "initrd": "lab.initrd",
        "cmdline": KERNEL_CMDLINE,
        "suite": "trixie",
        "kernel_version": "6.12.1-cloud-amd64",
        "packages": [*BASE_PACKAGES, "haproxy"],
        "sha512": hashlib.sha512(b"qcow2 of ext4").hexdigest(),
    }
    assert read_manifest(tmp_path / "lab.json") == built
    assert any("mmdebstrap trixie" in line for line in logged)


def test_a_built_image_is_a_lab_image_entry(tmp_path):
    built = build_image("lab", tmp_path, MIRROR, "bookworm", [], FakeTools(), log=lambda _: None)
    spec = resolve_image(built.image_entry())
    assert (spec.path, spec.kernel, spec.initrd) == (built.path, built.kernel, built.initrd)
    assert spec.cmdline == KERNEL_CMDLINE
    assert (spec.algo, spec.digest, spec.format) == ("sha512", built.sha512, "qcow2")


@pytest.mark.parametrize("kernels", [(), ("6.1.0-1-cloud-amd64", "6.1.0-2-cloud-amd64")])
def test_not_exactly_one_kernel_fails_and_leaves_nothing(tmp_path, kernels):
    with pytest.raises(ImageError, match="expected one kernel"):
        build_image("lab", tmp_path, MIRROR, "trixie", [], FakeTools(kernels), log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_tool_leaves_the_previous_image_alone(tmp_path):
    build_image("lab", tmp_path, MIRROR, "trixie", [], FakeTools(), log=lambda _: None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing(argv):
        if argv[0] == "mkfs.ext4":
            raise ImageError("mkfs.ext4 failed with exit status 1")
        FakeTools()(argv)

    with pytest.raises(ImageError, match=r"mkfs.ext4 failed"):
        build_image("lab", tmp_path, MIRROR, "trixie", [], failing, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_read_manifest_of_a_broken_file_is_an_image_error(tmp_path):
    (tmp_path / "x.json").write_text('{"name": "x"}')
    with pytest.raises(ImageError, match="cannot read image manifest"):
        read_manifest(tmp_path / "x.json")


def test_run_command_translates_failures():
    run_command(["true"])
    with pytest.raises(ImageError, match=r"^false failed with exit status 1"):
        run_command(["false"])
    with pytest.raises(ImageError, match="labctl-no-such-tool is not installed"):
        run_command(["labctl-no-such-tool"])


# --- click command -------------------------------------------------------------------------


def test_build_command_passes_options_and_prints_the_manifest(tmp_path, monkeypatch):
    seen = {}

    def fake_build(name, out_dir, mirror, suite, include):
        seen.update(name=name, out_dir=out_dir, mirror=mirror, suite=suite, include=include)
        return build_image(name, out_dir, mirror or MIRROR, suite, include, FakeTools(), log=lambda _: None)

    monkeypatch.setattr(imagebuild, "build_image", fake_build)
    args = ["lab", "--suite", "bookworm", "--include", "haproxy", "--include", "dnsmasq", "--output", str(tmp_path)]
    result = CliRunner().invoke(cli_imagebuild.build_command, args)
    assert result.exit_code == 0, result.output
    assert seen == dict(name="lab", out_dir=tmp_path, mirror=None, suite="bookworm", include=("haproxy", "dnsmasq"))
    data = json.loads(result.stdout)
    assert data["suite"] == "bookworm" and data["manifest"] == str(tmp_path / "lab.json")


def test_build_command_writes_to_the_cache_by_default(monkeypatch, isolated_home):
    def fake_build(name, out_dir, mirror, suite, include):
        return build_image(name, out_dir, MIRROR, suite, include, FakeTools(), log=lambda _: None)

    monkeypatch.setattr(imagebuild, "build_image", fake_build)
    result = CliRunner().invoke(cli_imagebuild.build_command, ["lab"])
    assert result.exit_code == 0, result.output
    manifest = isolated_home / "cache" / "labctl" / "builds" / "lab.json"
    assert json.loads(result.stdout)["manifest"] == str(manifest) and manifest.is_file()
    assert json.loads(result.stdout)["suite"] == imagebuild.DEFAULT_SUITE


def test_build_command_refuses_unknown_suites(monkeypatch):
    monkeypatch.setattr(imagebuild, "build_image", pytest.fail)
    result = CliRunner().invoke(cli_imagebuild.build_command, ["lab", "--suite", "jessie"])
    assert result.exit_code == 2 and "jessie" in result.output


def test_build_command_needs_root(monkeypatch):
    monkeypatch.setattr(cli_imagebuild.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(cli_imagebuild.build_command, ["lab"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ImageError) and "needs root" in str(result.exception)
