"""The real kubeadm builds master1's control-plane PKI on the CAs and keys labctl made on the host.

master1's seed files under /etc/kubernetes (the CAs, the service-account keys) and its kubeadm
configuration are written, as the seed writes them (same bytes, same modes), into a directory that
kubeadm then uses as its root (``--rootfs``: kubeadm chroots into it, so it writes nowhere else;
``--cert-dir`` cannot be combined with ``--config``). There ``kubeadm init phase certs all`` and
``kubeadm init phase kubeconfig admin`` run with the configuration labctl wrote, offline
(tests/kubeadm/labs.py), for every lab shape and minor.
"""

import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path, PurePosixPath

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from labctl.guest.etcd import SEED_PKI
from labctl.guest.roles import KUBE_PKI, KUBEADM_CONFIG
from labctl.lab.plan import API_PORT
from labctl.pki.x509 import issued_and_valid
from tests.kubeadm.labs import run_offline, seed_files

pytestmark = [pytest.mark.slow, pytest.mark.kubeadm]

KUBERNETES_DIR = PurePosixPath(KUBE_PKI).parent  # /etc/kubernetes
# Every certificate `certs all` signs, by the CA that must have signed it (stacked etcd; an external
# etcd has no etcd/server, peer or healthcheck-client, and is checked for what it has).
SIGNED_BY = {
    "apiserver.crt": "ca.crt",
    "apiserver-kubelet-client.crt": "ca.crt",
    "front-proxy-client.crt": "front-proxy-ca.crt",
    "etcd/server.crt": "etcd/ca.crt",
    "etcd/peer.crt": "etcd/ca.crt",
    "etcd/healthcheck-client.crt": "etcd/ca.crt",
    "apiserver-etcd-client.crt": "etcd/ca.crt",
}


@dataclass(frozen=True)
class Master1Pki:
    """kubeadm's run on master1's seed files: the root it ran in, what the seed put there, its output."""

    root: Path
    seeded: dict[str, tuple[bytes, int]]  # path on the node -> (content, mode)
    certs: str  # output of `init phase certs all`
    seconds: float

    def file(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def pki(self, name: str) -> Path:
        return self.file(f"{KUBE_PKI}/{name}")


@pytest.fixture(scope="module")
def master1_pki(kubeadm, lab, tmp_path_factory) -> Master1Pki:
    plan, secrets = lab
    root = tmp_path_factory.mktemp("master1-root")
    seeded = {}
    for seed_path, entry in seed_files(plan, plan.node("master1"), secrets).items():
        # The seed keeps the lab's CAs in SEED_PKI; the bootstrap copies them into KUBE_PKI before kubeadm runs.
        path = seed_path.replace(SEED_PKI, KUBE_PKI, 1) if seed_path.startswith(f"{SEED_PKI}/") else seed_path
        if PurePosixPath(path).is_relative_to(KUBERNETES_DIR) or path == KUBEADM_CONFIG:
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(entry["content"])
            target.chmod(int(entry["permissions"], 8))
            seeded[path] = (target.read_bytes(), int(entry["permissions"], 8))
    assert f"{KUBE_PKI}/ca.key" in seeded, "master1's seed carries no CA key: nothing to check"
    began = time.monotonic()
    result = run_offline([str(kubeadm), "init", "phase", "certs", "all", "--config", KUBEADM_CONFIG,
                          "--rootfs", str(root)], tmp_path_factory.mktemp("home"))
    assert result.returncode == 0, f"kubeadm init phase certs all:\n{result.stdout}{result.stderr}"
    return Master1Pki(root, seeded, result.stdout, round(time.monotonic() - began, 2))


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_kubeadm_uses_labctls_cas_and_keys_and_leaves_them_as_the_seed_wrote_them(master1_pki):
    for path, (content, mode) in master1_pki.seeded.items():
        written = master1_pki.file(path)
        assert (written.read_bytes(), written.stat().st_mode & 0o777) == (content, mode), f"kubeadm changed {path}"
    for authority in ("ca", "front-proxy-ca", "etcd/ca"):
        if f"{KUBE_PKI}/{authority}.key" in master1_pki.seeded:
            assert f"Using existing {authority} certificate authority" in master1_pki.certs
    assert 'Using the existing "sa" key' in master1_pki.certs
    print(f"kubeadm init phase certs all: {master1_pki.seconds} s")


def test_every_certificate_kubeadm_signs_chains_to_labctls_ca(master1_pki):
    signed = {name: ca for name, ca in SIGNED_BY.items() if master1_pki.pki(name).exists()}
    assert {"apiserver.crt", "apiserver-kubelet-client.crt", "front-proxy-client.crt"} <= set(signed)
    for name, ca in signed.items():
        cert, ca_cert = master1_pki.pki(name).read_text(), master1_pki.seeded[f"{KUBE_PKI}/{ca}"][0].decode()
        assert issued_and_valid(cert, ca_cert, datetime.now(UTC)), name


def test_the_apiserver_certificate_names_the_api_and_master1(master1_pki, lab):
    plan, _ = lab
    master1 = plan.node("master1")
    names = certificate(master1_pki.pki("apiserver.crt")).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    dns, ips = set(names.get_values_for_type(x509.DNSName)), set(names.get_values_for_type(x509.IPAddress))
    assert {plan.api_name, master1.name} <= dns, dns
    assert {ip_address(plan.api_address), ip_address(master1.internal.address.ip)} <= ips, ips


def test_kubeadm_writes_an_admin_kubeconfig_on_that_pki(master1_pki, kubeadm, lab, tmp_path):
    plan, secrets = lab
    result = run_offline([str(kubeadm), "init", "phase", "kubeconfig", "admin", "--config", KUBEADM_CONFIG,
                          "--rootfs", str(master1_pki.root)], tmp_path)
    assert result.returncode == 0, f"kubeadm init phase kubeconfig admin:\n{result.stdout}{result.stderr}"
    conf = yaml.safe_load(master1_pki.file(f"{KUBERNETES_DIR}/admin.conf").read_text())
    [cluster], [user] = conf["clusters"], conf["users"]
    assert cluster["cluster"]["server"] == f"https://{plan.api_name}:{API_PORT}"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode() == \
        secrets.kubernetes_ca.cert_pem
    client = base64.b64decode(user["user"]["client-certificate-data"]).decode()
    assert issued_and_valid(client, secrets.kubernetes_ca.cert_pem, datetime.now(UTC))
    subject = x509.load_pem_x509_certificate(client.encode()).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    for path, (content, _) in master1_pki.seeded.items():
        assert master1_pki.file(path).read_bytes() == content, f"kubeadm changed {path}"
