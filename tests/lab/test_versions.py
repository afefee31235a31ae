"""The version table: one row per Kubernetes minor, and what `plan` refuses or warns about from it."""

import datetime

import pytest

from labctl.errors import ConfigError
from labctl.guest.kubeadm import kubeadm_api_version
from labctl.lab.catalog import load_catalog
from labctl.lab.config import load_lab, parse_lab
from labctl.lab.versions import check_runtime, load_versions, pair, support_warnings

TODAY = datetime.date(2026, 12, 3)


def test_the_default_minor_is_the_newest_that_runs_on_the_default_images_containerd():
    table, catalog = load_versions(), load_catalog()
    default_image = catalog.images[catalog.default]
    assert default_image.debian == "trixie" and table.debian["trixie"] == (1, 7)
    runnable = [m for m in table.minors.values() if m.containerd <= table.debian[default_image.debian]]
    assert max(runnable, key=lambda m: pair(m.name)).name == table.default == "1.35"
    lab = load_lab()
    assert lab.kubernetes.version == table.default
    assert support_warnings(lab.kubernetes.version, TODAY) == []


def test_every_row_is_complete_and_the_api_follows_the_minor():
    table = load_versions()
    assert kubeadm_api_version("1.30.5") == "kubeadm.k8s.io/v1beta3"
    assert kubeadm_api_version("1.31") == kubeadm_api_version("1.36") == "kubeadm.k8s.io/v1beta4"
    for name, minor in table.minors.items():
        assert minor.cni.keys() == {"flannel", "calico"}, name
        assert minor.pause.startswith("3."), name
    assert table.minors["1.36"].containerd == (2, 0) and table.minors["1.35"].containerd == (1, 7)


def test_a_minor_that_needs_containerd_2_on_an_image_with_1_x_is_refused_in_one_line():
    with pytest.raises(ConfigError) as caught:
        parse_lab('kubernetes: {version: "1.36"}\n', "t")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("kubernetes.version: Kubernetes 1.36 needs containerd ≥ 2.0, but image "
                              "debian-13-genericcloud-amd64 (Debian trixie) has containerd 1.7")
    assert 'kubernetes.version: "1.35"' in message
    assert "`labctl image build NAME --suite forky`" in message


def test_an_image_that_carries_containerd_2_runs_1_36(tmp_path):
    image = tmp_path / "forky.qcow2"
    image.write_bytes(b"")
    lab = parse_lab(f'image: {{path: {image}, debian: forky}}\nkubernetes: {{version: "1.36"}}\n', "t")
    assert lab.image.debian == "forky" and lab.kubernetes.version == "1.36"
    parse_lab(f'image: {{path: {image}}}\nkubernetes: {{version: "1.36"}}\n', "t")  # unknown release: not judged
    with pytest.raises(ConfigError, match=r"image\.debian: unknown Debian release 'trixy' \(did you mean 'trixie'"):
        parse_lab(f"image: {{path: {image}, debian: trixy}}\n", "t")


def test_bookworm_images_run_what_containerd_1_6_supports():
    check_runtime("1.31", "debian-12-genericcloud-amd64", "bookworm")
    with pytest.raises(ConfigError, match=r'Kubernetes 1\.32 needs containerd ≥ 1\.7.*kubernetes\.version: "1\.31"'):
        check_runtime("1.32", "debian-12-genericcloud-amd64", "bookworm")


def test_a_minor_past_its_end_of_support_is_a_warning_not_a_refusal():
    parse_lab('kubernetes: {version: "1.31"}\n', "t")
    (warning,) = support_warnings("1.31.4", TODAY)
    assert warning == ('kubernetes.version: Kubernetes 1.31 is past its end of upstream support (2025-10-28); '
                       'the default is "1.35"')
    assert support_warnings("1.35", TODAY) == []


def test_minors_outside_the_table_name_the_range():
    with pytest.raises(ConfigError, match=r"kubernetes\.version: 1\.40 is not in labctl's version table "
                                          r"\(1\.28 to 1\.36\)"):
        parse_lab('kubernetes: {version: "1.40"}\n', "t")
