"""The shipped catalog, image references from lab.yaml, checksum files, data lookup."""

import json
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labctl.errors import ConfigError, ImageError
from labctl.lab.catalog import ImageSpec, load_catalog, parse_catalog, parse_checksums, resolve_image
from labctl.resources import data_file, read_text

HEX512 = "ab" * 64
HEX256 = "cd" * 32
URL = "https://images.example.org/x/my-disk.qcow2"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_shipped_catalog_has_debian_13_default_and_12(catalog):
    assert catalog.default == "debian-13-genericcloud-amd64"
    for release in ("12", "13"):
        for variant in ("genericcloud", "generic"):
            for arch in ("amd64", "arm64"):
                spec = catalog.images[f"debian-{release}-{variant}-{arch}"]
                assert spec.arch == arch and spec.format == "qcow2"
                assert spec.filename == f"debian-{release}-{variant}-{arch}.qcow2"


def test_catalog_entries_point_at_official_sha512sums_beside_the_image(catalog):
    for spec in catalog.images.values():
        image, sums = urlsplit(spec.url), urlsplit(spec.checksums_url)
        assert image.scheme == "https" and image.netloc == sums.netloc == "cloud.debian.org"
        assert PurePosixPath(sums.path) == PurePosixPath(image.path).parent / "SHA512SUMS"
        assert spec.algo == "sha512" and spec.digest is None


def test_data_file_falls_back_to_the_checkout():
    path = data_file("images", "catalog.yaml")
    assert "debian-13-genericcloud-amd64" in path.read_text(encoding="utf-8")
    assert "default:" in read_text("images", "catalog.yaml")
    with pytest.raises(ValueError, match="unknown data kind"):
        data_file("kernels", "x")


def test_name_resolves_to_the_catalog_entry(catalog):
    assert resolve_image("debian-12-genericcloud-amd64", catalog=catalog).name == "debian-12-genericcloud-amd64"
    assert resolve_image(None, catalog=catalog) == catalog.images[catalog.default]


def test_unknown_name_suggests_the_nearest(catalog):
    with pytest.raises(ConfigError) as err:
        resolve_image("debian-13-genericloud-amd64", "labs.image", catalog=catalog)
    assert err.value.path == "labs.image"
    assert "did you mean 'debian-13-genericcloud-amd64'?" in str(err.value)


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"url": URL, "sha512": HEX512.upper()}, {"algo": "sha512", "digest": HEX512, "name": "my-disk"}),
        ({"url": URL, "sha256": f"sha256:{HEX256}"}, {"algo": "sha256", "digest": HEX256}),
        (
            {"url": URL, "checksums": "https://images.example.org/x/SHA256SUMS"},
            {"algo": "sha256", "digest": None, "checksums_url": "https://images.example.org/x/SHA256SUMS"},
        ),
        ({"url": URL, "checksums": "https://e.org/x/sums.txt"}, {"algo": None}),  # learnt from the digest length
        ({"url": "https://e.org/a/root.raw", "sha512": HEX512}, {"format": "raw", "name": "root"}),
        ({"url": URL, "sha512": HEX512, "name": "mine", "arch": "arm64"}, {"name": "mine", "arch": "arm64"}),
    ],
)
def test_url_mappings(mapping, expected):
    spec = resolve_image(mapping)
    assert spec.url == mapping["url"] and spec.path is None
    for key, value in expected.items():
        assert getattr(spec, key) == value


def test_local_path_is_taken_from_the_lab_file_directory(tmp_path):
    spec = resolve_image({"path": "images/built.qcow2"}, base_dir=tmp_path)
    assert spec.path == tmp_path / "images/built.qcow2"
    assert (spec.name, spec.algo, spec.digest) == ("built", None, None)
    assert resolve_image({"path": "/srv/x.raw", "sha512": HEX512}).path == Path("/srv/x.raw")


def test_direct_kernel_boot_fields(tmp_path):
    spec = resolve_image(
        {"path": "root.raw", "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=ttyS0"},
        base_dir=tmp_path,
    )
    assert (spec.kernel, spec.initrd, spec.cmdline) == (tmp_path / "vmlinuz", tmp_path / "initrd.img", "console=ttyS0")


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ({"url": URL}, "image", "exactly one of sha512, sha256 or checksums"),
        ({"url": URL, "sha512": HEX512, "sha256": HEX256}, "image", "exactly one of"),
        ({"sha512": HEX512}, "image", "exactly one of url or path"),
        ({"url": URL, "path": "/x", "sha512": HEX512}, "image", "exactly one of url or path"),
        ({"path": "/x", "checksums": URL}, "image", "at most one of sha512 or sha256"),
        ({"url": URL, "sha512": "abc"}, "image.sha512", "128 hex digits"),
        ({"url": URL, "sha256": HEX512}, "image.sha256", "64 hex digits"),
        ({"url": URL, "sha512": 12}, "image.sha512", "hex string"),
        ({"url": "ftp://e.org/x.qcow2", "sha512": HEX512}, "image.url", "http(s) URL"),
        ({"url": "https://e.org/", "sha512": HEX512}, "image.url", "http(s) URL of a file"),
        ({"url": URL, "sha512": HEX512, "sha521": 1}, "image.sha521", "did you mean `sha512`?"),
        ({"url": URL, "sha512": HEX512, "format": "qcow"}, "image.format", "did you mean 'qcow2'?"),
        ({"url": URL, "sha512": HEX512, "arch": "x86_64"}, "image.arch", "one of amd64, arm64"),
        ({"url": URL, "sha512": HEX512, "name": "a b"}, "image.name", "invalid image name"),
        ({"path": "/x.raw", "initrd": "/i"}, "image", "need a kernel"),
        (["debian"], "image", "not a list"),
        (12, "image", "not a number"),
    ],
)
def test_bad_references_name_the_field(value, path, message):
    catalog = parse_catalog({"default": "a", "images": {"a": {"url": URL, "sha512": HEX512}}})
    with pytest.raises(ConfigError) as err:
        resolve_image(value, "image", catalog=catalog)
    assert err.value.path == path
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_catalog_validation():
    with pytest.raises(ConfigError, match="unknown image 'b'"):
        parse_catalog({"default": "b", "images": {"a": {"url": URL, "sha512": HEX512}}})
    with pytest.raises(ConfigError, match="catalog entries need a url"):
        parse_catalog({"default": "a", "images": {"a": {"path": "/x", "sha512": HEX512}}})
    with pytest.raises(ConfigError, match=r"images.a.colour: unknown key"):
        parse_catalog({"default": "a", "images": {"a": {"url": URL, "sha512": HEX512, "colour": "red"}}})


def test_checksum_file_formats():
    text = "\n".join([
        f"{HEX512}  debian-13-generic-amd64.qcow2",
        f"{'ef' * 64} *debian-13-genericcloud-amd64.qcow2",
        f"SHA256 (root.raw) = {HEX256.upper()}",
        "",
        "garbage",
    ])
    assert parse_checksums(text, "debian-13-genericcloud-amd64.qcow2", "SUMS") == ("sha512", "ef" * 64)
    assert parse_checksums(text, "debian-13-generic-amd64.qcow2", "SUMS") == ("sha512", HEX512)
    assert parse_checksums(text, "root.raw", "SUMS") == ("sha256", HEX256)
    with pytest.raises(ImageError, match=r"SUMS has no checksum line for other.qcow2"):
        parse_checksums(text, "other.qcow2", "SUMS")


_names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}\.qcow2", fullmatch=True)


@given(st.dictionaries(_names, st.binary(min_size=64, max_size=64), min_size=1, max_size=8), st.data())
def test_checksum_lookup_finds_each_file(entries, data):
    text = "".join(f"{digest.hex()}  {name}\n" for name, digest in entries.items())
    name = data.draw(st.sampled_from(sorted(entries)))
    assert parse_checksums(text, name, "SUMS") == ("sha512", entries[name].hex())


def test_spec_filename_and_with_digest():
    spec = ImageSpec(name="x", url="https://e.org/a%20b/disk%201.qcow2")
    assert spec.filename == "disk 1.qcow2"
    assert spec.with_digest("sha512", HEX512).digest == HEX512


def test_an_image_built_offline_is_named_by_its_name(isolated_home):
    from labctl.lab.catalog import built_manifest

    manifest = built_manifest("lab-offline")
    manifest.parent.mkdir(parents=True)
    for suffix in (".qcow2", ".vmlinuz", ".initrd"):
        manifest.with_suffix(suffix).write_bytes(b"x")
    manifest.write_text(json.dumps({
        "name": "lab-offline", "format": "qcow2", "file": "lab-offline.qcow2", "kernel": "lab-offline.vmlinuz",
        "initrd": "lab-offline.initrd", "cmdline": "root=LABEL=labctl-root ro console=ttyS0", "sha512": "a" * 128}))
    spec = resolve_image("lab-offline")
    assert spec.path == manifest.with_suffix(".qcow2") and spec.kernel == manifest.with_suffix(".vmlinuz")
    assert (spec.algo, spec.digest, spec.cmdline) == ("sha512", "a" * 128, "root=LABEL=labctl-root ro console=ttyS0")
    manifest.write_text("{broken")
    with pytest.raises(ConfigError, match=r"image: unreadable image manifest"):
        resolve_image("lab-offline")
