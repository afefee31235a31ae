"""An external etcd's certificates: every member's names and address, the right usages, signed by the lab's
etcd CA, kept across runs and made again when they no longer fit the plan."""

import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.etcd import APISERVER_CLIENT_CN, HEALTHCHECK_CLIENT_CN
from labctl.pki.secrets import ensure_secrets
from labctl.pki.x509 import cert_identity, check_key_pair, issued_and_valid

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EXTERNAL = "kubernetes: {etcd: external}\nnodes: {etcd: {count: 3}}"


@pytest.fixture
def plan():
    return plan_lab(parse_lab(EXTERNAL, "t"))


@pytest.fixture
def state(plan, tmp_path):
    return LabState.for_lab(plan.lab.name, tmp_path)


def test_every_member_gets_server_peer_and_healthcheck_certificates_naming_it(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    assert secrets.etcd is not None
    members = plan.nodes_of("etcd")
    assert sorted(secrets.etcd.members) == [node.name for node in members] == ["etcd1", "etcd2", "etcd3"]
    ca = secrets.etcd_ca.cert_pem
    for node in members:
        certs = secrets.etcd.members[node.name]
        for pair, usages in ((certs.server, ("serverAuth", "clientAuth")), (certs.peer, ("serverAuth", "clientAuth"))):
            common_name, dns, ips, found = cert_identity(pair.cert_pem)
            assert common_name == node.name
            assert set(dns) == {node.name, node.fqdn, "localhost"}
            assert set(ips) == {str(node.internal.address.ip), "127.0.0.1", "::1"}
            assert set(found) == set(usages)
            assert issued_and_valid(pair.cert_pem, ca, NOW + timedelta(days=1))
            check_key_pair(pair.cert_pem, pair.key_pem)
        common_name, dns, ips, found = cert_identity(certs.healthcheck_client.cert_pem)
        assert (common_name, dns, ips, found) == (HEALTHCHECK_CLIENT_CN, (), (), ("clientAuth",))
    common_name, dns, ips, found = cert_identity(secrets.etcd.apiserver_client.cert_pem)
    assert (common_name, dns, ips, found) == (APISERVER_CLIENT_CN, (), (), ("clientAuth",))
    assert issued_and_valid(secrets.etcd.apiserver_client.cert_pem, ca, NOW)
    # Not the cluster CA: an etcd client certificate must not pass as a Kubernetes one.
    assert not issued_and_valid(secrets.etcd.apiserver_client.cert_pem, secrets.kubernetes_ca.cert_pem, NOW)


def test_leaf_certificates_are_not_cas(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    assert secrets.etcd is not None
    cert = x509.load_pem_x509_certificate(secrets.etcd.members["etcd1"].server.cert_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_certificates_are_kept_private_and_reused(state, plan):
    first = ensure_secrets(state, plan, NOW)
    files = sorted(p.relative_to(state.root / "pki") for p in (state.root / "pki").rglob("*") if p.is_file())
    etcd_files = [str(p) for p in files if str(p).startswith("etcd/etcd") or "etcd-client" in str(p)]
    assert len(etcd_files) == 3 * 6 + 2
    for name in etcd_files:
        assert stat.S_IMODE((state.root / "pki" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((state.root / "pki" / "etcd" / "etcd1").stat().st_mode) == 0o700
    assert ensure_secrets(state, plan, NOW + timedelta(days=3)).etcd == first.etcd


def test_a_certificate_that_no_longer_fits_the_plan_is_made_again(state, plan, tmp_path):
    first = ensure_secrets(state, plan, NOW)
    assert first.etcd is not None
    # The same lab on another subnet: every member's address changed, so its server and peer certificates.
    moved = plan_lab(parse_lab(EXTERNAL + "\nnetworks: {internal: {cidr: 10.199.0.0/24}}", "t"))
    second = ensure_secrets(state, moved, NOW)
    assert second.etcd is not None
    assert second.etcd.members["etcd1"].server != first.etcd.members["etcd1"].server
    assert "10.199.0.101" in cert_identity(second.etcd.members["etcd1"].server.cert_pem)[2]
    assert second.etcd.members["etcd1"].healthcheck_client == first.etcd.members["etcd1"].healthcheck_client
    assert second.etcd.apiserver_client == first.etcd.apiserver_client
    # Expired: made again.
    later = NOW + timedelta(days=400)
    third = ensure_secrets(state, moved, later)
    assert third.etcd is not None and third.etcd.apiserver_client != second.etcd.apiserver_client


def test_a_stacked_lab_has_no_external_etcd_certificates(tmp_path):
    stacked = plan_lab(parse_lab("name: k8s", "t"))
    secrets = ensure_secrets(LabState.for_lab("k8s", tmp_path), stacked, NOW)
    assert secrets.etcd is None
    assert not (tmp_path / "k8s" / "pki" / "apiserver-etcd-client.crt").exists()
