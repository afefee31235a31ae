"""containerd's configuration for its 1.x and 2.x layouts, parsed back as TOML."""

import tomllib

import pytest

from labctl.guest.containerd import CONFIG_FILES, containerd_config, dump_toml, render_containerd_configs
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab


def runc(config: dict, major: int) -> dict:
    plugin = "io.containerd.grpc.v1.cri" if major == 1 else "io.containerd.cri.v1.runtime"
    return config["plugins"][plugin]["containerd"]["runtimes"]["runc"]


@pytest.mark.parametrize(("major", "version"), [(1, 2), (2, 3)])
def test_each_major_gets_its_layout_with_the_systemd_cgroup_driver(major, version):
    plan = plan_lab(parse_lab("name: k8s\n", "t"))
    text = render_containerd_configs(plan)[CONFIG_FILES[major]]
    config = tomllib.loads(text)
    assert config == containerd_config(plan, major)  # what is written is what is meant
    assert config["version"] == version
    entry = runc(config, major)
    assert entry["options"] == {"SystemdCgroup": True}
    # containerd 1.x replaces runc's whole entry with the file's: its defaults are restated.
    assert entry["runtime_type"] == "io.containerd.runc.v2"
    assert entry[{1: "sandbox_mode", 2: "sandboxer"}[major]] == "podsandbox"


def test_the_sandbox_image_follows_the_minor():
    for version, tag in (("1.35", "3.10.1"), ("1.31", "3.10"), ("1.30", "3.9")):
        plan = plan_lab(parse_lab(f'kubernetes: {{version: "{version}"}}\n', "t"))
        one, two = (tomllib.loads(render_containerd_configs(plan)[CONFIG_FILES[m]]) for m in (1, 2))
        assert one["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == f"registry.k8s.io/pause:{tag}"
        pinned = two["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]
        assert pinned["sandbox"] == f"registry.k8s.io/pause:{tag}"


def test_the_toml_writer_quotes_what_it_must_and_refuses_what_it_cannot():
    assert tomllib.loads(dump_toml({"a.b": {"c": 1, "d": False}})) == {"a.b": {"c": 1, "d": False}}
    with pytest.raises(ValueError):
        dump_toml({"k": 'a "quote"'})
    with pytest.raises(ValueError):
        containerd_config(plan_lab(parse_lab("name: k8s\n", "t")), 3)
