"""Rendered role configuration checked by the real tools (haproxy -c, dnsmasq --test, keepalived -t,
nft -c) and the kubeadm configuration checked against the fields the kubeadm API reference documents."""

import hashlib
import os
import shutil
import subprocess

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from labctl.errors import ConfigError, LabError
from labctl.guest.kubeadm import kubeadm_api_version, kubeadm_documents
from labctl.guest.roles import (
    k8s_apt_url,
    lab_env,
    render_dnsmasq_conf,
    render_haproxy_cfg,
    render_keepalived_conf,
    render_kubeadm_config,
    render_lab_env,
    render_nftables,
)
from labctl.lab.config import load_lab, parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets
from tests.guest.manifests import with_cni

BIG = "nodes: {lb: {count: 2}, master: {count: 5}}\n"


@pytest.fixture(scope="module")
def big_plan():
    return with_cni(plan_lab(parse_lab(BIG, "big lab")))


@pytest.fixture(scope="module")
def secrets(big_plan, tmp_path_factory):
    # Host keys for every node name of the big lab cover the default lab too.
    return ensure_secrets(LabState.for_lab(big_plan.lab.name, tmp_path_factory.mktemp("state")), big_plan)


@pytest.fixture(scope="module")
def plan():
    return with_cni(plan_lab(load_lab()))


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed on this host (make test-deps installs it)")
    return path


def check(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}{result.stderr}"


# --- real tools -------------------------------------------------------------------------------


@pytest.mark.parametrize("lab", ["default", "big"])
def test_haproxy_accepts_the_config(lab, plan, big_plan, secrets, tmp_path):
    haproxy = tool("haproxy")
    the_plan = plan if lab == "default" else big_plan
    ca = tmp_path / "ca.crt"
    ca.write_text(secrets.kubernetes_ca.cert_pem)
    for lb in (n for n in the_plan.nodes if n.role == "lb"):
        text = render_haproxy_cfg(the_plan, lb, secrets, ca_file=str(ca))
        cfg = tmp_path / f"{lb.name}.cfg"
        cfg.write_text(text)
        check([haproxy, "-c", "-f", str(cfg)])
        masters = [n for n in the_plan.nodes if n.role == "master"]
        servers = [line.split() for line in text.splitlines() if line.strip().startswith("server ")]
        assert [(s[1], s[2]) for s in servers] == [(m.name, f"{m.internal.address.ip}:6443") for m in masters]
        assert "http-check send meth GET uri /readyz" in text and "check-ssl verify required" in text
        assert f"bind {lb.internal.address.ip}:8404" in text  # stats: internal address only
        assert f"stats auth admin:{secrets.haproxy_stats_password}" in text
        assert "timeout connect" in text and "timeout client" in text and "timeout server" in text


def test_dnsmasq_accepts_the_config_and_names_every_node(big_plan, tmp_path):
    dnsmasq = tool("dnsmasq")
    text = render_dnsmasq_conf(big_plan)
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(text)
    check([dnsmasq, "--test", f"--conf-file={conf}"])
    records = {line.split("=", 1)[1].split(",")[0]: line.split(",")[-1]
               for line in text.splitlines() if line.startswith("host-record=")}
    assert records == {**{n.fqdn: str(n.internal.address.ip) for n in big_plan.nodes},
                       big_plan.api_name: str(big_plan.api_address)}
    assert f"server={big_plan.network('nat').host_address.ip}" in text.splitlines()
    assert "interface=lan0" in text.splitlines() and "no-resolv" in text.splitlines()


def test_keepalived_accepts_the_config(big_plan, secrets, tmp_path):
    keepalived = tool("keepalived")
    if os.geteuid() != 0:
        # keepalived -t needs the interface to exist (so a network namespace with a lan0 link),
        # and under a user namespace it sees /usr/bin/pgrep as not root-owned and rejects the check.
        pytest.skip("keepalived -t is checked as root only (run the tests as root, as CI does)")
    unshare, ip = tool("unshare"), tool("ip")
    for lb in (n for n in big_plan.nodes if n.role == "lb"):
        conf = tmp_path / f"{lb.name}.conf"
        conf.write_text(render_keepalived_conf(big_plan, lb, secrets))
        script = f"{ip} link add lan0 type veth peer name labctl0 && exec {keepalived} -t -f {conf}"
        check([unshare, "--net", "sh", "-c", script])


def test_keepalived_vrrp_settings(big_plan, secrets):
    lb1, lb2 = big_plan.node("lb1"), big_plan.node("lb2")
    first = render_keepalived_conf(big_plan, lb1, secrets)
    second = render_keepalived_conf(big_plan, lb2, secrets)
    for text, peer in ((first, lb2), (second, lb1)):
        assert f"virtual_router_id {secrets.keepalived_router_id}" in text
        assert f"auth_pass {secrets.keepalived_password}" in text
        assert f"{big_plan.api_address}/24 dev lan0" in text
        assert f"        {peer.internal.address.ip}\n" in text
    assert "state MASTER" in first and "priority 150" in first
    assert "state BACKUP" in second and "priority 140" in second
    with pytest.raises(LabError):
        render_keepalived_conf(plan_lab(load_lab()), plan_lab(load_lab()).node("lb1"), secrets)


def test_nftables_ruleset_checks_and_is_tight(plan, tmp_path):
    nft = tool("nft")
    text = render_nftables(plan)
    rules = tmp_path / "nftables.conf"
    rules.write_text(text)
    # nft -c talks netlink without committing; a private user+net namespace keeps the host out of it
    # where the kernel allows one.
    argv = [nft, "-c", "-f", str(rules)]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--user", "--map-root-user", "--net", "true"],
                                  capture_output=True, timeout=60).returncode == 0:
        argv = [unshare, "--user", "--map-root-user", "--net", *argv]
    check(argv)
    cidr = plan.network("internal").cidr
    assert f'oifname "wan0" ip saddr {cidr} masquerade' in text
    assert "chain forward {\n        type filter hook forward priority filter; policy drop;" in text
    assert f'iifname "lan0" oifname "wan0" ip saddr {cidr} accept' in text


# --- env file ---------------------------------------------------------------------------------


def test_lab_env_values_stay_in_the_safe_charset(big_plan):
    for node in big_plan.nodes:
        text = render_lab_env(big_plan, node)
        for line in text.splitlines()[1:]:
            key, _, value = line.partition("=")
            assert key.isupper() or "_" in key
            assert all(c.isalnum() or c in "._:/,@=-" for c in value), line
    master3 = lab_env(big_plan, big_plan.node("master3"))
    assert master3["PREVIOUS_MASTER_ADDRESS"] == str(big_plan.node("master2").internal.address.ip)
    assert master3["API_CA"] == "/etc/labctl/pki/ca.crt"  # the seed's copy: kubeadm_pki fills /etc/kubernetes/pki later
    assert master3["PREVIOUS_DEPENDS"] == f"master2@{big_plan.node('master2').internal.address.ip}"
    assert int(master3["PREVIOUS_WAIT"]) > int(lab_env(big_plan, big_plan.node("master2"))["PREVIOUS_WAIT"])
    master1 = lab_env(big_plan, big_plan.node("master1"))
    assert master1["LB_DEPENDS"].split(",") == [f"lb{i}@{big_plan.node(f'lb{i}').internal.address.ip}" for i in (1, 2)]
    assert master1["CNI_MANIFEST"] == "/etc/labctl/cni.yaml" and len(master1["CNI_SHA256"]) == 64
    worker = lab_env(big_plan, big_plan.node("worker1"))
    assert worker["API_CA"] == "/etc/labctl/kubernetes-ca.crt" and "CNI_SHA256" not in worker
    assert [dep.split("@")[0] for dep in worker["API_DEPENDS"].split(",")] == ["master1", "lb1", "lb2"]
    assert lab_env(big_plan, big_plan.node("lb1"))["KEEPALIVED"] == "yes"
    gateway = lab_env(big_plan, big_plan.node("gateway"))
    assert "K8S_VERSION" not in gateway and "DNS_WAIT" not in gateway and gateway["APT_MIRROR"] == ""


def test_values_the_env_file_would_have_to_quote_are_refused_at_the_lab_yaml_field():
    # lab.yaml names the field; the env file's own check (render_lab_env) stays as the last guard.
    with pytest.raises(ConfigError, match=r"^kubernetes\.apt_url: expected an http"):
        parse_lab("kubernetes: {apt_url: 'http://x.example/a;b/'}\n", "t")
    with pytest.raises(ConfigError, match=r"^kubernetes\.apt_key: expected an http"):
        parse_lab("kubernetes: {apt_key: 'https://x.example/~k/Release.key'}\n", "t")


def test_k8s_package_pins():
    exact = plan_lab(parse_lab('kubernetes: {version: "1.30.5"}\n', "t"))
    env = lab_env(exact, exact.node("worker1"))
    assert env["K8S_PKG_VERSION"] == "1.30.5-"
    assert env["K8S_APT_URL"] == "https://pkgs.k8s.io/core:/stable:/v1.30/deb/"
    assert env["K8S_APT_KEY_URL"] == "https://pkgs.k8s.io/core:/stable:/v1.30/deb/Release.key"
    minor = plan_lab(load_lab())
    assert lab_env(minor, minor.node("worker1"))["K8S_PKG_VERSION"] == "1.35."


def test_k8s_packages_from_a_repository_labctl_is_pointed_at(tmp_path):
    key = tmp_path / "Release.key"
    key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n-----END PGP PUBLIC KEY BLOCK-----\n")
    lab = plan_lab(parse_lab("kubernetes: {apt_url: 'http://10.0.0.1:8080/k8s', apt_key: Release.key}\n", "t",
                             base_dir=tmp_path))
    assert k8s_apt_url(lab) == "http://10.0.0.1:8080/k8s/"
    env = lab_env(lab, lab.node("worker1"))
    assert env["K8S_APT_URL"] == "http://10.0.0.1:8080/k8s/" and env["K8S_APT_KEY_URL"] == ""  # the seed's file
    assert lab.lab.kubernetes.apt_key == key.read_text()
    by_url = plan_lab(parse_lab("kubernetes: {apt_url: 'http://m/k8s/', apt_key: 'http://m/key.asc'}\n", "t"))
    assert lab_env(by_url, by_url.node("worker1"))["K8S_APT_KEY_URL"] == "http://m/key.asc"
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(ConfigError, match=r"kubernetes\.apt_key: .* is not an armored OpenPGP public key"):
        parse_lab("kubernetes: {apt_key: bad.key}\n", "t", base_dir=tmp_path)


def test_apt_mirror_in_the_env_file():
    plain = plan_lab(parse_lab("apt_mirror: http://m.example/debian\n", "t"))
    env = lab_env(plain, plain.node("lb1"))
    assert (env["APT_MIRROR"], env["APT_MIRROR_UPDATES"], env["APT_SECURITY_MIRROR"]) == (
        "http://m.example/debian", "no", "")
    full = plan_lab(parse_lab("apt_mirror: {url: http://m.example/debian, updates: true, "
                              "security: http://m.example/debian-security}\n", "t"))
    env = lab_env(full, full.node("gateway"))
    assert (env["APT_MIRROR_UPDATES"], env["APT_SECURITY_MIRROR"]) == ("yes", "http://m.example/debian-security")


# --- kubeadm ----------------------------------------------------------------------------------
# Field sets from the kubeadm configuration API reference
# (kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta3/ and .v1beta4/, as of v1.31).
# A dict is an object with exactly these fields, [x] a list of x, STR a scalar, MAP a string map.
STR, MAP = "scalar", "map"
TYPE = {"apiVersion": STR, "kind": STR}
BOOTSTRAP_TOKEN = {"token": STR, "description": STR, "ttl": STR, "expires": STR, "usages": [STR], "groups": [STR]}
TAINT = {"key": STR, "value": STR, "effect": STR, "timeAdded": STR}
API_ENDPOINT = {"advertiseAddress": STR, "bindPort": STR}
PATCHES = {"directory": STR}
HOST_PATH_MOUNT = {"name": STR, "hostPath": STR, "mountPath": STR, "readOnly": STR, "pathType": STR}
EXTERNAL_ETCD = {"endpoints": [STR], "caFile": STR, "certFile": STR, "keyFile": STR}
NETWORKING = {"serviceSubnet": STR, "podSubnet": STR, "dnsDomain": STR}
ARG = {"name": STR, "value": STR}
ENV_VAR = {"name": STR, "value": STR, "valueFrom": MAP}
TIMEOUTS = {k: STR for k in ("controlPlaneComponentHealthCheck", "kubeletHealthCheck", "kubernetesAPICall",
                             "etcdAPICall", "tlsBootstrap", "discovery", "upgradeManifests")}


def kubeadm_schema(v1beta4: bool) -> dict:
    extra_args = [ARG] if v1beta4 else MAP
    component = {"extraArgs": extra_args, "extraVolumes": [HOST_PATH_MOUNT]}
    if v1beta4:
        component["extraEnvs"] = [ENV_VAR]
    node_registration = {"name": STR, "criSocket": STR, "taints": [TAINT], "kubeletExtraArgs": extra_args,
                         "ignorePreflightErrors": [STR], "imagePullPolicy": STR}
    local_etcd = {"imageRepository": STR, "imageTag": STR, "dataDir": STR, "extraArgs": extra_args,
                  "serverCertSANs": [STR], "peerCertSANs": [STR]}
    api_server = {**component, "certSANs": [STR]}
    discovery = {"bootstrapToken": {"token": STR, "apiServerEndpoint": STR, "caCertHashes": [STR],
                                    "unsafeSkipCAVerification": STR},
                 "file": {"kubeConfigPath": STR}, "tlsBootstrapToken": STR}
    dns = {"imageRepository": STR, "imageTag": STR}
    init = {**TYPE, "bootstrapTokens": [BOOTSTRAP_TOKEN], "nodeRegistration": node_registration,
            "localAPIEndpoint": API_ENDPOINT, "certificateKey": STR, "skipPhases": [STR], "patches": PATCHES}
    join = {**TYPE, "nodeRegistration": node_registration, "caCertPath": STR, "discovery": discovery,
            "controlPlane": {"localAPIEndpoint": API_ENDPOINT, "certificateKey": STR},
            "skipPhases": [STR], "patches": PATCHES}
    cluster = {**TYPE, "etcd": {"local": local_etcd, "external": EXTERNAL_ETCD}, "networking": NETWORKING,
               "kubernetesVersion": STR, "controlPlaneEndpoint": STR, "apiServer": api_server,
               "controllerManager": component, "scheduler": component, "dns": dns, "certificatesDir": STR,
               "imageRepository": STR, "featureGates": MAP, "clusterName": STR}
    if v1beta4:
        node_registration["imagePullSerial"] = STR
        local_etcd["extraEnvs"] = [ENV_VAR]
        dns["disabled"] = STR
        init |= {"dryRun": STR, "timeouts": TIMEOUTS}
        join |= {"dryRun": STR, "timeouts": TIMEOUTS}
        cluster |= {"proxy": {"disabled": STR}, "encryptionAlgorithm": STR, "certificateValidityPeriod": STR,
                    "caCertificateValidityPeriod": STR}
    else:
        api_server["timeoutForControlPlane"] = STR
        discovery["timeout"] = STR
    return {"InitConfiguration": init, "ClusterConfiguration": cluster, "JoinConfiguration": join}


def undocumented(value, schema, path: str) -> list[str]:
    """Key paths of ``value`` that ``schema`` does not document, or whose shape differs."""
    if schema == STR:
        return [] if isinstance(value, (str, int, bool)) else [f"{path}: expected a scalar"]
    if schema == MAP:
        ok = isinstance(value, dict) and all(isinstance(v, (str, int, bool)) for v in value.values())
        return [] if ok else [f"{path}: expected a string map"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [bad for i, item in enumerate(value) for bad in undocumented(item, schema[0], f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path}: expected an object"]
    return [bad for key, item in value.items()
            for bad in (undocumented(item, schema[key], f"{path}.{key}") if key in schema
                        else [f"{path}.{key}: not a documented field"])]


def ca_hash_from_pem(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


@pytest.mark.parametrize("version", ["1.29", "1.30.5", "1.31", "1.32.1"])
def test_kubeadm_config_uses_only_documented_fields(version, secrets):
    plan = plan_lab(parse_lab(f'{BIG}kubernetes: {{version: "{version}"}}\n', "t"))
    v1beta4 = kubeadm_api_version(version) == "kubeadm.k8s.io/v1beta4"
    assert v1beta4 == (int(version.split(".")[1]) >= 31)
    schema = kubeadm_schema(v1beta4)
    for node in (n for n in plan.nodes if n.role in ("master", "worker")):
        docs = list(yaml.safe_load_all(render_kubeadm_config(plan, node, secrets)))
        assert docs == kubeadm_documents(plan, node, secrets)
        kinds = [doc["kind"] for doc in docs]
        if node.name == "master1":
            assert kinds == ["InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"]
            assert docs.pop() == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                                  "cgroupDriver": "systemd"}
        else:
            assert kinds == ["JoinConfiguration"]
        for doc in docs:
            assert doc["apiVersion"] == kubeadm_api_version(version)
            assert undocumented(doc, schema[doc["kind"]], doc["kind"]) == []


def test_documented_field_check_catches_version_mismatches():
    v1beta4 = kubeadm_schema(True)["JoinConfiguration"]["nodeRegistration"]
    v1beta3 = kubeadm_schema(False)["JoinConfiguration"]["nodeRegistration"]
    assert undocumented({"kubeletExtraArgs": {"node-ip": "x"}}, v1beta4, "n") == ["n.kubeletExtraArgs: expected a list"]
    assert undocumented({"kubeletExtraArgs": [{"name": "node-ip", "value": "x"}]}, v1beta3, "n") == [
        "n.kubeletExtraArgs: expected a string map"]
    assert undocumented({"timeouts": {}}, kubeadm_schema(False)["JoinConfiguration"], "j") == [
        "j.timeouts: not a documented field"]


def node_ip_arg(registration: dict) -> str:
    args = registration["kubeletExtraArgs"]
    return next(a["value"] for a in args if a["name"] == "node-ip") if isinstance(args, list) else args["node-ip"]


def test_kubeadm_config_values(big_plan, secrets):
    init, cluster, _kubelet = kubeadm_documents(big_plan, big_plan.node("master1"), secrets)
    spec = big_plan.lab.kubernetes
    assert cluster["controlPlaneEndpoint"] == "api.k8s.internal:6443"
    assert cluster["networking"] == {"podSubnet": str(spec.pod_cidr), "serviceSubnet": str(spec.service_cidr)}
    assert set(cluster["apiServer"]["certSANs"]) >= {big_plan.api_name, str(big_plan.api_address)}
    assert cluster["etcd"] == {"local": {"dataDir": "/var/lib/etcd"}}
    assert cluster["kubernetesVersion"] == "stable-1.35"
    (token,) = init["bootstrapTokens"]
    assert token["token"] == secrets.bootstrap_token and token["ttl"] == "24h0m0s"
    assert "system:bootstrappers:kubeadm:default-node-token" in token["groups"]
    assert "certificateKey" not in init
    master1 = big_plan.node("master1")
    assert node_ip_arg(init["nodeRegistration"]) == str(master1.internal.address.ip)
    assert init["localAPIEndpoint"] == {"advertiseAddress": str(master1.internal.address.ip), "bindPort": 6443}
    ca_hash = ca_hash_from_pem(secrets.kubernetes_ca.cert_pem)
    assert ca_hash == secrets.ca_cert_hash
    for name in ("master2", "master5", "worker1"):
        node = big_plan.node(name)
        (join,) = kubeadm_documents(big_plan, node, secrets)
        discovery = join["discovery"]["bootstrapToken"]
        assert discovery == {"token": secrets.bootstrap_token, "apiServerEndpoint": "api.k8s.internal:6443",
                             "caCertHashes": [ca_hash]}
        assert node_ip_arg(join["nodeRegistration"]) == str(node.internal.address.ip)
        if node.role == "master":
            assert join["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": str(node.internal.address.ip),
                                                                 "bindPort": 6443}}
        else:
            assert "controlPlane" not in join


def test_kubeadm_config_exact_version_and_relaxed_minimums(secrets):
    plan = plan_lab(parse_lab('kubernetes: {version: "1.30.5", enforce_minimums: false}\n', "t"))
    init, cluster, _kubelet = kubeadm_documents(plan, plan.node("master1"), secrets)
    assert cluster["kubernetesVersion"] == "v1.30.5"
    assert init["nodeRegistration"]["kubeletExtraArgs"] == {"node-ip": str(plan.node("master1").internal.address.ip)}
    assert init["nodeRegistration"]["ignorePreflightErrors"] == ["NumCPU", "Mem"]
    (join,) = kubeadm_documents(plan, plan.node("worker1"), secrets)
    assert "ignorePreflightErrors" not in join["nodeRegistration"]


def test_kubeadm_config_refuses_other_roles_and_old_versions(plan, secrets):
    with pytest.raises(LabError):
        render_kubeadm_config(plan, plan.node("lb1"), secrets)
    with pytest.raises(ConfigError, match=r"kubernetes\.version: 1\.22 is not in labctl's version table"):
        parse_lab('kubernetes: {version: "1.22"}\n', "t")
