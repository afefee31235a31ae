"""The image cache: layout, records, import of local files, users from lab.json, rm, list."""

import hashlib
import json

import pytest
from click.testing import CliRunner

from labctl.cli.image import ImageEnv, image
from labctl.errors import ImageError, StateError
from labctl.image.cache import ImageCache
from labctl.lab.catalog import parse_catalog

DATA = b"qcow2 image bytes " * 1000


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


@pytest.fixture
def cache(tmp_path):
    return ImageCache(tmp_path / "cache", labs_root=tmp_path / "labs", clock=lambda: 1_700_000_000)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.qcow2"
    path.write_bytes(DATA)
    return path


def add_lab(cache: ImageCache, name: str, digest: str) -> None:
    state = cache.labs_root / name
    state.mkdir(parents=True)
    (state / "lab.json").write_text(json.dumps({"name": name, "image_digest": digest}))


def test_add_file_keys_the_image_by_sha512(cache, disk):
    cached = cache.add_file(disk, "mine")
    assert cached.path == cache.root / f"sha512-{sha512(DATA)}.qcow2"
    assert cached.path.read_bytes() == DATA
    record = json.loads((cache.root / f"sha512-{sha512(DATA)}.json").read_text())
    assert record["name"] == "mine" and record["size"] == len(DATA)
    assert record["added"] == "2023-11-14T22:13:20+00:00"
    assert record["source"] == str(disk)
    assert cache.images() == [cached]
    assert cache.find("sha512", sha512(DATA)) == cached
    assert cache.find_by_source(disk) == cached
    assert list(cache.partial_dir.glob("*.part")) == []


def test_sha256_verified_images_can_be_found_by_either_digest(cache, disk):
    sha256 = hashlib.sha256(DATA).hexdigest()
    cached = cache.add_file(disk, "mine", expected=("sha256", sha256))
    assert cached.digests == {"sha256": sha256, "sha512": sha512(DATA)}
    assert cache.find("sha256", sha256.upper()) == cached


def test_wrong_digest_leaves_nothing(cache, disk):
    with pytest.raises(ImageError, match=f"expected {'0' * 128}, got {sha512(DATA)}"):
        cache.add_file(disk, "mine", expected=("sha512", "0" * 128))
    assert cache.images() == []
    assert [p.name for p in cache.root.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_changed_source_file_is_imported_again(cache, disk):
    cache.add_file(disk, "mine")
    disk.write_bytes(DATA + b"more")
    assert cache.find_by_source(disk) is None


def test_builder_can_write_into_the_partial_path(cache, tmp_path):
    part = cache.partial_path("built")
    part.write_bytes(DATA)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    cached = cache.add_file(part, "built", format="raw", extra_files={"kernel": kernel}, cmdline="quiet")
    assert not part.exists()
    assert cached.path.suffix == ".raw" and cached.source is None
    assert cached.kernel == cache.root / f"sha512-{sha512(DATA)}.kernel" and cached.initrd is None
    assert cached.cmdline == "quiet"


def test_records_without_an_image_or_broken_are_ignored(cache, disk):
    cached = cache.add_file(disk, "mine")
    (cache.root / "sha512-bad.json").write_text("{not json")
    assert cache.images() == [cached]
    cached.path.unlink()
    assert cache.images() == []


def test_users_come_from_lab_json(cache, disk):
    cached = cache.add_file(disk, "mine")
    add_lab(cache, "alpha", cached.digest)
    add_lab(cache, "beta", f"sha512:{'0' * 128}")
    add_lab(cache, "gamma", cached.digest.upper().replace("SHA512", "sha512"))
    assert cache.users(cached) == ["alpha", "gamma"]


def test_rm_is_refused_while_labs_use_the_image(cache, disk):
    cached = cache.add_file(disk, "mine")
    add_lab(cache, "alpha", cached.digest)
    add_lab(cache, "beta", cached.digest)
    with pytest.raises(ImageError, match="image mine is in use by labs alpha, beta"):
        cache.remove("mine")
    assert cached.path.exists()


def test_rm_without_dependents_removes_image_record_and_extras(cache, disk, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    cached = cache.add_file(disk, "mine", extra_files={"kernel": kernel})
    add_lab(cache, "other", f"sha512:{'0' * 128}")
    assert cache.remove("mine") == [cached]
    assert cache.images() == []
    assert [p for p in cache.root.glob("sha512-*")] == []


def test_rm_by_digest_prefix_and_unknown_names(cache, disk):
    cached = cache.add_file(disk, "mine")
    assert cache.remove(f"sha512:{sha512(DATA)[:10]}") == [cached]
    cache.add_file(disk, "mine")
    with pytest.raises(ImageError, match=r"no cached image 'mien'.*did you mean 'mine'"):
        cache.remove("mien")
    assert cache.remove(sha512(DATA)[:8])[0].name == "mine"


def test_unreadable_lab_json_is_a_state_error(cache, disk):
    cache.add_file(disk, "mine")
    (cache.labs_root / "broken").mkdir(parents=True)
    (cache.labs_root / "broken" / "lab.json").write_text("{")
    with pytest.raises(StateError, match=r"broken/lab.json"):
        cache.remove("mine")


# --- labctl image list / rm ---------------------------------------------------------


@pytest.fixture
def env(cache):
    catalog = parse_catalog({
        "default": "deb13",
        "images": {
            "deb13": {"url": "https://e.org/d13.qcow2", "checksums": "https://e.org/SHA512SUMS"},
            "deb12": {"url": "https://e.org/d12.qcow2", "sha512": "ab" * 64, "description": "old"},
        },
    })
    return ImageEnv(cache=cache, catalog=lambda: catalog, session=_no_session)


def _no_session():
    raise AssertionError("list and rm make no requests")


def test_list_shows_name_digest_size_and_users(env, disk):
    cached = env.cache.add_file(disk, "mine")
    add_lab(env.cache, "alpha", cached.digest)
    result = CliRunner().invoke(image, ["list"], obj=env)
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "DIGEST", "SIZE", "ADDED", "USED"]
    assert row.split()[:6] == ["mine", cached.digest[:19] + "…", "17.6", "KiB", "2023-11-14", "alpha"]


def test_list_json(env, disk):
    cached = env.cache.add_file(disk, "mine")
    result = CliRunner().invoke(image, ["list", "-o", "json"], obj=env)
    assert json.loads(result.stdout) == [{
        "name": "mine", "digest": cached.digest, "size": len(DATA), "added": cached.added,
        "used_by": [], "path": str(cached.path),
    }]


def test_list_empty_cache_says_so_on_stderr(env):
    result = CliRunner().invoke(image, ["list"], obj=env)
    assert result.exit_code == 0 and result.stdout == ""
    assert "no cached images" in result.stderr


def test_list_available_marks_the_default(env):
    result = CliRunner().invoke(image, ["list", "--available", "-o", "json"], obj=env)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["deb13"]["default"] and not rows["deb12"]["default"]
    assert rows["deb12"]["description"] == "old" and not rows["deb12"]["cached"]


def test_cli_rm_refused_then_allowed(env, disk):
    cached = env.cache.add_file(disk, "mine")
    add_lab(env.cache, "alpha", cached.digest)
    refused = CliRunner().invoke(image, ["rm", "mine"], obj=env)
    assert refused.exit_code == 1
    assert isinstance(refused.exception, ImageError) and "alpha" in str(refused.exception)
    (env.cache.labs_root / "alpha" / "lab.json").unlink()
    done = CliRunner().invoke(image, ["rm", "mine"], obj=env)
    assert done.exit_code == 0, done.output
    assert "removed mine" in done.stderr
    assert env.cache.images() == []
