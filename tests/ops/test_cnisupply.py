"""The CNI manifest fetched on the host: verified by its SHA-256, cached like images, adapted."""

import hashlib

import pytest

from labctl.errors import ConfigError, ImageError
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from labctl.ops.cnisupply import cached_cni, cni_for_plan
from tests.guest.manifests import FLANNEL
from tests.httpserver import HTTPTestServer

DIGEST = hashlib.sha256(FLANNEL.encode()).hexdigest()


def lab_at(url: str, digest: str = DIGEST, pod_cidr: str = "10.32.0.0/16"):
    text = f"kubernetes: {{pod_cidr: {pod_cidr}, cni_manifest: {{url: '{url}', sha256: '{digest}'}}}}\n"
    return plan_lab(parse_lab(text, "t"))


def test_fetched_once_verified_cached_and_adapted():
    with HTTPTestServer() as server:
        plan = lab_at(server.add("/kube-flannel.yml", FLANNEL.encode()))
        assert cached_cni(plan) is None  # `labctl plan` never fetches
        text = cni_for_plan(plan)
        assert '"Network": "10.32.0.0/16"' in text
        assert cni_for_plan(plan) == text == cached_cni(plan)
        assert len(server.seen("/kube-flannel.yml")) == 1  # the second time from the cache


def test_a_wrong_digest_is_never_cached_or_used():
    with HTTPTestServer() as server:
        plan = lab_at(server.add("/kube-flannel.yml", FLANNEL.encode()), digest="0" * 64)
        with pytest.raises(ImageError, match="sha256 mismatch"):
            cni_for_plan(plan)
        assert cached_cni(plan) is None


def test_a_cached_manifest_of_another_structure_fails_at_plan_time():
    broken = FLANNEL.replace("name: kube-flannel-cfg", "name: other")
    with HTTPTestServer() as server:
        plan = lab_at(server.add("/broken.yml", broken.encode()), hashlib.sha256(broken.encode()).hexdigest())
        with pytest.raises(ConfigError, match="expected one ConfigMap kube-flannel-cfg"):
            cni_for_plan(plan)
        with pytest.raises(ConfigError, match="expected one ConfigMap kube-flannel-cfg"):
            cached_cni(plan)


def test_a_manifest_that_is_not_text_is_one_line_naming_the_field():
    binary = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    with HTTPTestServer() as server:
        url = server.add("/not-yaml.png", binary)
        plan = lab_at(url, hashlib.sha256(binary).hexdigest())
        with pytest.raises(ConfigError) as refused:
            cni_for_plan(plan)
    assert str(refused.value).startswith(f"kubernetes.cni_manifest: {url} is not UTF-8 text: invalid start byte")
