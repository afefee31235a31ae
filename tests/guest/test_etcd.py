"""etcd in the guest: each external member's configuration, what its seed and the masters' seeds carry, the
scripts' parameters, and kubeadm's etcd.external section."""

import pytest
import yaml

from labctl.errors import ConfigError
from labctl.guest.cloudconfig import role_config
from labctl.guest.etcd import (
    APISERVER_CLIENT_CERT,
    APISERVER_CLIENT_KEY,
    DATA_DIR,
    ETCD_CA,
    ETCD_CONFIG,
    SEED_CLIENT_CERT,
    SEED_CLIENT_KEY,
    SEED_ETCD_CA,
    endpoints,
    etcd_config,
    etcd_members,
    initial_cluster,
    quorum,
)
from labctl.guest.kubeadm import kubeadm_documents
from labctl.guest.roles import lab_env
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets
from labctl.pki.x509 import cert_identity
from labctl.resources import read_text
from tests.guest.manifests import with_cni
from tests.guest.test_roles import kubeadm_schema, undocumented

EXTERNAL = 'kubernetes: {etcd: external, version: "1.31"}\nnodes: {master: {count: 3}, worker: {count: 1}}\n'


@pytest.fixture(scope="module")
def plan():
    return with_cni(plan_lab(parse_lab(EXTERNAL, "external")))


@pytest.fixture(scope="module")
def secrets(plan, tmp_path_factory):
    return ensure_secrets(LabState.for_lab(plan.lab.name, tmp_path_factory.mktemp("state")), plan)


def files_of(plan, secrets, node: str) -> dict[str, dict]:
    return {entry["path"]: entry for entry in role_config(plan, plan.node(node), secrets)["write_files"]}


def test_each_member_listens_on_its_own_address_and_starts_with_every_member(plan):
    members = plan.nodes_of("etcd")
    cluster = ",".join(f"{n.name}=https://{n.internal.address.ip}:2380" for n in members)
    assert initial_cluster(plan) == cluster
    configs = {node.name: etcd_config(plan, node) for node in members}
    for node in members:
        config, ip = configs[node.name], node.internal.address.ip
        assert config["name"] == node.name
        assert config["listen-peer-urls"] == config["initial-advertise-peer-urls"] == f"https://{ip}:2380"
        assert config["listen-client-urls"] == f"https://{ip}:2379,https://127.0.0.1:2379"
        assert config["advertise-client-urls"] == f"https://{ip}:2379"
        assert config["initial-cluster"] == cluster and config["initial-cluster-state"] == "new"
        assert config["data-dir"] == DATA_DIR
        for side, stem in (("client-transport-security", "server"), ("peer-transport-security", "peer")):
            assert config[side] == {"cert-file": f"/etc/kubernetes/pki/etcd/{stem}.crt",
                                    "key-file": f"/etc/kubernetes/pki/etcd/{stem}.key",
                                    "client-cert-auth": True, "trusted-ca-file": ETCD_CA}
    # Members differ in their name and addresses only.
    shared = [{k: v for k, v in c.items() if "url" not in k and k != "name"} for c in configs.values()]
    assert all(entry == shared[0] for entry in shared)


def test_the_unit_drop_in_starts_etcd_with_the_staged_configuration():
    text = read_text("cloud-init", "files/etcd-service.conf")
    assert f"ExecStart=/usr/bin/etcd --config-file {ETCD_CONFIG}" in text
    assert "ExecStart=\n" in text  # Debian's own ExecStart is cleared first


def test_a_members_seed_carries_its_config_and_its_own_certificates(plan, secrets):
    files = files_of(plan, secrets, "etcd2")
    assert yaml.safe_load(files[ETCD_CONFIG]["content"]) == etcd_config(plan, plan.node("etcd2"))
    staged = {path.rsplit("/", 1)[1]: entry for path, entry in files.items() if "/etcd-pki/" in path}
    assert set(staged) == {"ca.crt", *(f"{s}.{e}" for s in ("server", "peer", "healthcheck-client")
                                                     for e in ("crt", "key"))}
    assert all(entry["permissions"] == ("0600" if name.endswith(".key") else "0644") for name, entry in staged.items())
    assert staged["ca.crt"]["content"] == secrets.etcd_ca.cert_pem
    assert cert_identity(staged["server.crt"]["content"])[0] == "etcd2"
    assert not any("kubeadm" in path or path.endswith("ca.key") for path in files)


def test_masters_of_an_external_etcd_get_the_client_certificate_and_not_the_etcd_ca_key(plan, secrets):
    for name in ("master1", "master2"):
        # in the seed's copy of kubeadm's directory, copied there before every kubeadm run
        files = files_of(plan, secrets, name)
        assert files[SEED_CLIENT_CERT]["content"] == secrets.etcd.apiserver_client.cert_pem
        assert files[SEED_CLIENT_KEY]["permissions"] == "0600"
        assert files[SEED_ETCD_CA]["content"] == secrets.etcd_ca.cert_pem
        assert "/etc/labctl/pki/etcd/ca.key" not in files
    stacked = with_cni(plan_lab(parse_lab("name: external", "t")))
    files = files_of(stacked, secrets, "master1")
    assert "/etc/labctl/pki/etcd/ca.key" in files and SEED_CLIENT_CERT not in files


def test_scripts_get_the_members_and_master1_waits_for_all_of_them(plan):
    env = lab_env(plan, plan.node("master1"))
    assert env["ETCD_TOPOLOGY"] == "external"
    assert env["ETCD_ENDPOINTS"] == endpoints(plan) == ",".join(f"https://{n.internal.address.ip}:2379"
                                                                for n in plan.nodes_of("etcd"))
    assert len(env["ETCD_ENDPOINTS"].split(",")) == 3 and env["ETCD_CLIENT_CERT"] == SEED_CLIENT_CERT
    member = lab_env(plan, plan.node("etcd1"))
    assert member["LAB_ROLE"] == "etcd" and member["ETCD_PKG_VERSION"] == "3.5."
    assert "K8S_VERSION" not in member
    stacked = with_cni(plan_lab(parse_lab("name: s", "t")))
    assert lab_env(stacked, stacked.node("master1"))["ETCD_TOPOLOGY"] == "stacked"
    assert "ETCD_ENDPOINTS" not in lab_env(stacked, stacked.node("master1"))
    assert "ETCD_TOPOLOGY" not in lab_env(stacked, stacked.node("worker1"))


@pytest.mark.parametrize("version", ["1.30", "1.31"])
def test_kubeadm_uses_etcd_external_with_kubeadms_file_layout(version, secrets):
    plan = plan_lab(parse_lab(EXTERNAL.replace('"1.31"', f'"{version}"'), "external"))
    _, cluster, _ = kubeadm_documents(plan, plan.node("master1"), secrets)
    assert cluster["etcd"] == {"external": {"endpoints": [m.client_url for m in etcd_members(plan)],
                                            "caFile": ETCD_CA, "certFile": APISERVER_CLIENT_CERT,
                                            "keyFile": APISERVER_CLIENT_KEY}}
    schema = kubeadm_schema(version == "1.31")
    assert undocumented(cluster, schema["ClusterConfiguration"], "ClusterConfiguration") == []


def test_members_are_the_masters_when_stacked_and_the_etcd_nodes_when_external(plan):
    stacked = with_cni(plan_lab(parse_lab("name: s", "t")))
    assert [m.name for m in etcd_members(stacked)] == ["master1", "master2", "master3"]
    assert [m.name for m in etcd_members(plan)] == ["etcd1", "etcd2", "etcd3"]
    assert [quorum(n) for n in (1, 3, 5, 7)] == [1, 2, 3, 4]


def test_etcd_is_pinned_to_what_the_images_debian_release_carries():
    # bookworm has etcd 3.4: a stacked lab's masters install its etcd-client, not trixie's 3.5.
    bookworm = with_cni(plan_lab(parse_lab('image: debian-12-genericcloud-amd64\nkubernetes: {version: "1.31"}\n',
                                           "t")))
    assert lab_env(bookworm, bookworm.node("master1"))["ETCD_PKG_VERSION"] == "3.4."
    trixie = with_cni(plan_lab(parse_lab("name: t", "t")))
    assert lab_env(trixie, trixie.node("master1"))["ETCD_PKG_VERSION"] == "3.5."
    own = with_cni(plan_lab(parse_lab("image: {path: /tmp/own.qcow2, sha256: " + "a" * 64 + "}\n", "t")))
    assert lab_env(own, own.node("master1"))["ETCD_PKG_VERSION"] == ""  # release unknown: not pinned


def test_an_external_etcd_on_an_image_with_another_etcd_is_refused_in_one_line():
    with pytest.raises(ConfigError) as refused:
        parse_lab('image: debian-12-genericcloud-amd64\nkubernetes: {version: "1.31", etcd: external}\n', "t")
    assert str(refused.value) == (
        "kubernetes.etcd: external etcd runs etcd 3.5, but image debian-12-genericcloud-amd64 (Debian bookworm) "
        "has etcd 3.4 (use etcd: stacked, or an image of Debian trixie (the default image))")
