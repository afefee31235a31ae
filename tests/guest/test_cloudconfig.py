"""Per-role cloud-config: structure, where the secrets go, and cloud-init's own schema validation."""

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from labctl.guest.cloudconfig import BOOTSTRAP, BOOTSTRAP_UNIT, ROLE_SCRIPTS, role_config, role_phases
from labctl.guest.seed import render_user_data
from labctl.lab.config import load_lab, parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets
from labctl.resources import read_text
from tests.guest.manifests import with_cni

BIG = "nodes: {lb: {count: 2}, master: {count: 5}}\n"
CA_FILES = ("ca", "front-proxy-ca", "etcd/ca")


@pytest.fixture(scope="module")
def big_plan():
    return with_cni(plan_lab(parse_lab(BIG, "big lab")))


@pytest.fixture(scope="module")
def plan():
    return with_cni(plan_lab(load_lab()))


@pytest.fixture(scope="module")
def secrets(big_plan, tmp_path_factory):
    # Host keys for every node name of the big lab cover the default lab too.
    return ensure_secrets(LabState.for_lab(big_plan.lab.name, tmp_path_factory.mktemp("state")), big_plan)


def strings(data) -> str:
    """Every string in parsed YAML, joined: what a node receives, whatever the YAML quoting."""
    if isinstance(data, dict):
        return "\0".join(strings(v) for v in data.values())
    if isinstance(data, list):
        return "\0".join(strings(v) for v in data)
    return str(data)


def files_of(config):
    return {entry["path"]: entry for entry in config["write_files"]}


def test_every_role_runs_bootstrap_with_an_argv_list(plan, secrets):
    for node in plan.nodes:
        config = role_config(plan, node, secrets)
        assert config["runcmd"] == [["systemctl", "daemon-reload"],
                                    ["systemctl", "enable", "--now", "--no-block", BOOTSTRAP_UNIT]]
        files = files_of(config)
        assert files[BOOTSTRAP]["permissions"] == "0755"
        unit = files[f"/etc/systemd/system/{BOOTSTRAP_UNIT}"]["content"]
        assert f"ExecStart={BOOTSTRAP}\n" in unit and "WantedBy=multi-user.target" in unit
        assert files[BOOTSTRAP]["content"] == read_text("cloud-init", "scripts/bootstrap")
        for script in ("lib.sh", *ROLE_SCRIPTS[node.role]):
            assert files[f"/usr/local/lib/labctl/{script}"]["content"] == read_text("cloud-init", f"scripts/{script}")
        env = files["/etc/labctl/lab.env"]["content"]
        assert f"NODE={node.name}\n" in env and f"LAB_ROLE={node.role}\n" in env
        assert all(entry["owner"] == "root:root" for entry in config["write_files"])
        assert "apt" not in config  # the image's own apt sources


def test_ssh_host_key_is_the_nodes_own(plan, secrets):
    for node in plan.nodes:
        keys = role_config(plan, node, secrets)["ssh_keys"]
        assert keys == {"ed25519_private": secrets.host_keys[node.name].private_pem,
                        "ed25519_public": secrets.host_keys[node.name].public}


def test_role_files(big_plan, secrets):
    gateway = files_of(role_config(big_plan, big_plan.node("gateway"), secrets))
    assert {"/etc/labctl/nftables.conf", "/etc/labctl/dnsmasq.conf",
            "/etc/sysctl.d/90-labctl-gateway.conf"} <= gateway.keys()
    lb = files_of(role_config(big_plan, big_plan.node("lb2"), secrets))
    assert lb["/etc/labctl/haproxy.cfg"]["permissions"] == "0600"
    assert lb["/etc/labctl/keepalived.conf"]["permissions"] == "0600"
    assert lb["/etc/labctl/kubernetes-ca.crt"]["content"] == secrets.kubernetes_ca.cert_pem
    master = files_of(role_config(big_plan, big_plan.node("master3"), secrets))
    for stem in CA_FILES:
        assert master[f"/etc/labctl/pki/{stem}.key"]["permissions"] == "0600"
        assert master[f"/etc/labctl/pki/{stem}.crt"]["permissions"] == "0644"
    assert master["/etc/labctl/pki/sa.key"]["content"] == secrets.service_account.private_pem
    assert master["/etc/labctl/pki/sa.pub"]["content"] == secrets.service_account.public
    assert {"/etc/labctl/containerd-1.toml", "/etc/labctl/containerd-2.toml"} <= master.keys()
    assert "/etc/labctl/cni.yaml" not in master  # master1's alone
    assert master["/etc/labctl/kubeadm.yaml"]["permissions"] == "0600"
    assert "/etc/modules-load.d/labctl-k8s.conf" in master and "/etc/sysctl.d/90-labctl-k8s.conf" in master
    worker = files_of(role_config(big_plan, big_plan.node("worker1"), secrets))
    assert not any(path.startswith("/etc/kubernetes/") for path in worker)  # kubeadm join writes those
    assert worker["/etc/labctl/kubeadm.yaml"]["permissions"] == "0600"
    single_lb = plan_lab(load_lab())
    assert "/etc/labctl/keepalived.conf" not in files_of(role_config(single_lb, single_lb.node("lb1"), secrets))


def test_secrets_only_where_they_are_used(big_plan, secrets):
    ca_keys = [secrets.kubernetes_ca.key_pem, secrets.front_proxy_ca.key_pem, secrets.etcd_ca.key_pem,
               secrets.service_account.private_pem]
    for node in big_plan.nodes:
        text = strings(yaml.safe_load(render_user_data(big_plan, node, secrets)))
        for key in ca_keys:
            assert (key in text) == (node.role == "master"), node.name
        assert (secrets.bootstrap_token in text) == (node.role in ("master", "worker")), node.name
        assert (secrets.haproxy_stats_password in text) == (node.role == "lb"), node.name
        assert (f"auth_pass {secrets.keepalived_password}" in text) == (node.role == "lb"), node.name
        assert secrets.admin.private_pem not in text and secrets.ssh_user_key.private_pem not in text
        for other, key in secrets.host_keys.items():
            assert (key.private_pem in text) == (other == node.name)


def test_the_mirror_goes_to_the_bootstrap_not_to_cloud_inits_apt_module(secrets):
    # Debian's images keep their sources whatever cloud-init's apt module is told (preserve_sources_list):
    # the bootstrap writes them itself (APT_MIRROR in the env file).
    plan = plan_lab(parse_lab("apt_mirror: http://mirror.example/debian\n", "t"))
    config = role_config(plan, plan.node("worker1"), secrets)
    assert "apt" not in config
    assert "APT_MIRROR=http://mirror.example/debian\n" in files_of(config)["/etc/labctl/lab.env"]["content"]


def test_master1_carries_the_adapted_cni_manifest_compressed(plan, secrets):
    import base64
    import gzip
    import hashlib

    entry = files_of(role_config(plan, plan.node("master1"), secrets))["/etc/labctl/cni.yaml"]
    assert entry["encoding"] == "gz+b64"
    text = gzip.decompress(base64.b64decode(entry["content"])).decode()
    assert text == plan.cni_manifest
    env = files_of(role_config(plan, plan.node("master1"), secrets))["/etc/labctl/lab.env"]["content"]
    assert f"CNI_SHA256={hashlib.sha256(text.encode()).hexdigest()}\n" in env
    assert len(entry["content"]) < len(text)  # flannel's 4.5 kB manifest takes about 1.6 kB of the seed


def test_role_phases_are_the_ones_the_scripts_report(big_plan):
    scripts = "".join(read_text("cloud-init", f"scripts/{name}") for name in
                      ("bootstrap", "gateway.sh", "lb.sh", "etcd.sh", "k8s-node.sh", "master.sh", "worker.sh"))
    reported = set(re.findall(r"^\s*(?:phase|step) ([a-z-]+)", scripts, re.M))
    seen = set()
    external = plan_lab(parse_lab("kubernetes: {etcd: external}", "external"))
    for the_plan in (big_plan, external):
        for node in the_plan.nodes:
            phases = role_phases(the_plan, node)
            assert phases[0] == "start" and phases[-1] == "ready"
            seen.update(phases)
    assert seen == reported
    assert role_phases(external, external.node("etcd2")) == ("start", "network", "packages", "etcd", "health", "ready")
    assert "wait-etcd" in role_phases(external, external.node("master1"))
    assert "wait-etcd" not in role_phases(external, external.node("master2"))
    assert "wait-etcd" not in role_phases(big_plan, big_plan.node("master1"))
    assert role_phases(big_plan, big_plan.node("master1"))[-5:] == ("wait-lb", "kubeadm-init", "cni", "kubeconfig",
                                                                    "ready")
    assert "wait-previous" in role_phases(big_plan, big_plan.node("master2"))
    assert "wait-api" in role_phases(big_plan, big_plan.node("worker1"))
    assert "keepalived" in role_phases(big_plan, big_plan.node("lb1"))
    assert "keepalived" not in role_phases(plan_lab(load_lab()), plan_lab(load_lab()).node("lb1"))


@pytest.mark.parametrize("lab", ["default", "big"])
def test_user_data_passes_cloud_init_schema(lab, plan, big_plan, secrets, tmp_path):
    cloud_init = shutil.which("cloud-init")
    if cloud_init is None:
        pytest.skip("cloud-init is not installed on this host (make test-deps installs it)")
    the_plan = plan if lab == "default" else big_plan
    paths = {}
    for node in the_plan.nodes:
        text = render_user_data(the_plan, node, secrets)
        data = yaml.safe_load(text)
        assert data["write_files"] and data["runcmd"]
        paths[node.name] = tmp_path / f"{node.name}.user-data"
        paths[node.name].write_text(text)

    def validate(path):
        return subprocess.run([cloud_init, "schema", "--config-file", str(path)],
                              capture_output=True, text=True, timeout=300)

    # One cloud-init process per node takes a second or two each; run them side by side.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(paths, pool.map(validate, paths.values()), strict=True))
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "Valid cloud-config" in result.stdout
