"""The CNI manifest as data: which one a lab gets, and its pod network set by parsing, on the host."""

import json

import pytest
import yaml

from labctl.errors import ConfigError
from labctl.guest.cni import adapt_manifest, cni_manifest
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from tests.guest.manifests import FLANNEL


def flannel(lab: str = "name: k8s\n"):
    return cni_manifest(plan_lab(parse_lab(lab, "t")))


def net_conf(text: str) -> dict:
    (config,) = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "ConfigMap"]
    return json.loads(config["data"]["net-conf.json"])


def test_the_release_follows_the_minor_and_the_pin_is_the_catalogs():
    cni = flannel()
    assert (cni.name, cni.release) == ("flannel", "v0.28.4")
    assert cni.source.url.endswith("/v0.28.4/kube-flannel.yml") and len(cni.source.sha256) == 64
    assert cni.pod_network is not None and cni.pod_network.configmap == "kube-flannel-cfg"
    calico = flannel("kubernetes: {cni: calico}\n")
    assert calico.release == "v3.30.1" and calico.pod_network is None


def test_the_pinned_structure_with_the_default_pod_network_is_carried_byte_for_byte():
    pod_cidr = plan_lab(parse_lab("name: k8s\n", "t")).lab.kubernetes.pod_cidr
    assert adapt_manifest(FLANNEL, flannel(), pod_cidr) == FLANNEL


def test_another_pod_network_is_set_in_the_json_and_nothing_else_changes():
    plan = plan_lab(parse_lab("kubernetes: {pod_cidr: 10.32.0.0/16}\n", "t"))
    text = adapt_manifest(FLANNEL, cni_manifest(plan), plan.lab.kubernetes.pod_cidr)
    assert net_conf(text) == {**net_conf(FLANNEL), "Network": "10.32.0.0/16"}
    before, after = list(yaml.safe_load_all(FLANNEL)), list(yaml.safe_load_all(text))
    for old, new in zip(before, after, strict=True):
        if old["kind"] != "ConfigMap":
            assert old == new
        else:
            assert old["data"]["cni-conf.json"] == new["data"]["cni-conf.json"]


@pytest.mark.parametrize("spelling", [
    # compact JSON, no spaces
    ('"Network": "10.244.0.0/16",', '"Network":"10.244.0.0/16",'),
    # a different key order inside the JSON
    ('"Network": "10.244.0.0/16",\n      "EnableNFTables": false,',
     '"EnableNFTables": false,\n      "Network": "10.244.0.0/16",'),
])
def test_other_spellings_of_the_same_manifest(spelling):
    text = FLANNEL.replace(*spelling)
    assert text != FLANNEL
    plan = plan_lab(parse_lab("kubernetes: {pod_cidr: 10.32.0.0/16}\n", "t"))
    assert net_conf(adapt_manifest(text, cni_manifest(plan), plan.lab.kubernetes.pod_cidr))["Network"] == "10.32.0.0/16"


def test_a_flow_style_manifest_of_other_layout():
    docs = list(yaml.safe_load_all(FLANNEL))
    docs.reverse()
    text = yaml.safe_dump_all(docs, default_flow_style=True)
    plan = plan_lab(parse_lab("kubernetes: {pod_cidr: 10.32.0.0/16}\n", "t"))
    assert net_conf(adapt_manifest(text, cni_manifest(plan), plan.lab.kubernetes.pod_cidr))["Network"] == "10.32.0.0/16"


@pytest.mark.parametrize(("broken", "message"), [
    (lambda t: "\n---\n".join(d for d in t.split("\n---\n") if "kind: ConfigMap" not in d),
     r"expected one ConfigMap kube-flannel-cfg, found 0 \(ConfigMaps: none\)"),
    (lambda t: t.replace("name: kube-flannel-cfg", "name: flannel-config"),
     r"expected one ConfigMap kube-flannel-cfg, found 0 \(ConfigMaps: flannel-config\)"),
    (lambda t: t.replace("net-conf.json: |", "net-config.json: |"),
     r"ConfigMap kube-flannel-cfg has no data key 'net-conf.json'"),
    (lambda t: t.replace('"Backend": {', '"Backend": {{'), r"net-conf.json of ConfigMap kube-flannel-cfg is not JSON"),
    (lambda t: t.replace('"Network": "10.244.0.0/16"', '"Subnet": "10.244.0.0/16"'),
     r"net-conf.json of ConfigMap kube-flannel-cfg has no 'Network' string"),
    (lambda t: t + "\n---\n- not an object\n", r"document 7 is not a Kubernetes object"),
    (lambda t: "key: [unclosed\n", r"not YAML"),
])
def test_a_manifest_of_another_structure_is_one_line_naming_it(broken, message):
    cni = flannel()
    with pytest.raises(ConfigError, match=r"^kubernetes\.cni_manifest: https://github\.com/\S+kube-flannel\.yml: "
                                          + message) as caught:
        adapt_manifest(broken(FLANNEL), cni, plan_lab(parse_lab("name: k8s\n", "t")).lab.kubernetes.pod_cidr)
    assert "\n" not in str(caught.value)


def test_a_lab_may_bring_its_own_manifest_by_path(tmp_path):
    (tmp_path / "cni.yaml").write_text(FLANNEL)
    lab = parse_lab(f"kubernetes: {{cni_manifest: {{path: cni.yaml, sha256: {'a' * 64}}}}}\n", "t", base_dir=tmp_path)
    cni = cni_manifest(plan_lab(lab))
    assert cni.source.path == tmp_path / "cni.yaml" and cni.source.url is None and cni.pod_network is not None
    with pytest.raises(ConfigError, match=r"kubernetes\.cni_manifest: needs exactly one of url or path"):
        parse_lab(f"kubernetes: {{cni_manifest: {{sha256: {'a' * 64}}}}}\n", "t")
