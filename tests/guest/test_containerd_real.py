"""labctl's containerd files loaded by Debian's real containerd 1.7 (trixie) and 2.x (forky):
``containerd config dump`` (what containerd made of the file, with its defaults) parsed as TOML.

The two packages come from the host's Debian mirror through apt (a root of its own, tests/harness/
aptclient.py) and are cached under ``$LABCTL_TEST_CACHE/containerd``; only the binary is run, as
``containerd --config FILE config dump``, which starts no daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from labctl.guest.containerd import CONFIG_FILES, render_containerd_configs
from labctl.image.aptsources import image_sources, read_host_sources
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from tests.harness.aptclient import AptRoot, explain
from tests.harness.aptproxy import cache_root

pytestmark = pytest.mark.slow

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# The suite whose containerd each major is; forky's Release may be "expired" by a test machine's clock.
SUITES = {1: "trixie", 2: "forky"}


def containerd_binary(major: int, work: Path) -> Path:
    """Debian's containerd of ``SUITES[major]``, its binary extracted (cached)."""
    suite = SUITES[major]
    cached = cache_root() / "containerd" / suite / "usr" / "bin" / "containerd"
    if cached.is_file():
        return cached
    try:
        mirror = next(s.uri for s in image_sources(read_host_sources(), "trixie") if "trixie" in s.suites)
    except Exception as err:  # noqa: BLE001 - no Debian mirror configured here: say why
        pytest.skip(f"no Debian mirror in this host's apt sources: {err}")
    apt = AptRoot(work / "apt", [f"deb [signed-by={KEYRING} check-valid-until=no] {mirror} {suite} main"])
    update = apt.update()
    assert update.returncode == 0, explain(update)
    download = apt.download("containerd", work / "debs")
    assert download.returncode == 0, explain(download)
    [deb] = (work / "debs").glob("containerd_*.deb")
    target = cached.parents[2]
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True, timeout=120)
    return cached


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None, reason="needs apt")
@pytest.mark.parametrize("major", [1, 2])
def test_debians_containerd_loads_labctls_file_with_the_systemd_cgroup_driver(major: int, tmp_path: Path) -> None:
    binary = containerd_binary(major, tmp_path)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert version.split()[2].startswith(f"{major}."), version
    plan = plan_lab(parse_lab("name: k8s\n", "t"))
    config = tmp_path / "config.toml"
    config.write_text(render_containerd_configs(plan)[CONFIG_FILES[major]])
    done = subprocess.run([str(binary), "--config", str(config), "config", "dump"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    dump = tomllib.loads(done.stdout)
    plugins = dump["plugins"]
    cri = plugins["io.containerd.grpc.v1.cri"] if major == 1 else plugins["io.containerd.cri.v1.runtime"]
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["sandbox_mode" if major == 1 else "sandboxer"] == "podsandbox"  # not lost to a partial entry
    sandbox = (cri["sandbox_image"] if major == 1 else
               plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"])
    assert sandbox == "registry.k8s.io/pause:3.10.1"
