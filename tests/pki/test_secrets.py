"""The lab's secrets: generated once, stored 0600 under <state>/pki, loaded back unchanged."""

import hashlib
import os
import re
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labctl.errors import StateError
from labctl.lab.config import load_lab, parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ca_cert_hash, ensure_secrets, keepalived_router_id, known_hosts_lines

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CAS = {"ca": "kubernetes", "front-proxy-ca": "front-proxy-ca", "etcd/ca": "etcd-ca"}


@pytest.fixture
def plan():
    return plan_lab(load_lab())


@pytest.fixture
def state(plan):
    return LabState.for_lab(plan.lab.name)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """relative path -> (inode, mtime_ns, content) of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check the signature by hand with the issuer's RSA public key (raises InvalidSignature)."""
    issuer.public_key().verify(
        cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
    )


def test_cas_are_self_signed_ten_year_cas(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    authorities = {"ca": secrets.kubernetes_ca, "front-proxy-ca": secrets.front_proxy_ca, "etcd/ca": secrets.etcd_ca}
    for stem, common_name in CAS.items():
        ca = authorities[stem]
        assert (state.root / "pki" / f"{stem}.crt").read_text() == ca.cert_pem
        assert (state.root / "pki" / f"{stem}.key").read_text() == ca.key_pem
        cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
        assert cert.subject == cert.issuer
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
        verify_signed_by(cert, cert)
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert basic.critical and basic.value.ca
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign and usage.value.digital_signature
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
        assert cert.not_valid_before_utc <= NOW and cert.not_valid_after_utc == NOW + timedelta(days=3650)
        key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert len({a.cert_pem for a in authorities.values()}) == 3


def test_admin_cert_chains_to_the_kubernetes_ca(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    ca = x509.load_pem_x509_certificate(secrets.kubernetes_ca.cert_pem.encode())
    cert = x509.load_pem_x509_certificate(secrets.admin.public.encode())
    assert cert.issuer == ca.subject
    verify_signed_by(cert, ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    key = serialization.load_pem_private_key(secrets.admin.private_pem.encode(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert (state.root / "pki/admin.crt").read_text() == secrets.admin.public


def test_ca_cert_hash_matches_an_independent_computation(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    pem = (state.root / "pki/ca.crt").read_text()
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert secrets.ca_cert_hash == expected == ca_cert_hash(pem)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", expected)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_ca_cert_hash_matches_kubeadm_documented_openssl_pipeline(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    pubkey = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=secrets.kubernetes_ca.cert_pem.encode(),
                            capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey,
                         capture_output=True, check=True).stdout
    assert secrets.ca_cert_hash == "sha256:" + hashlib.sha256(der).hexdigest()


def test_token_passwords_and_router_id(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", secrets.bootstrap_token)
    assert re.fullmatch(r"[A-Za-z0-9]{20,}", secrets.haproxy_stats_password)
    assert re.fullmatch(r"[A-Za-z0-9]{8}", secrets.keepalived_password)
    assert (state.root / "pki/token").read_text() == secrets.bootstrap_token + "\n"
    assert (state.root / "pki/haproxy-stats").read_text().strip() == secrets.haproxy_stats_password
    assert (state.root / "pki/keepalived").read_text().strip() == secrets.keepalived_password
    expected_id = int(hashlib.sha256(b"k8s").hexdigest(), 16) % 255 + 1
    assert secrets.keepalived_router_id == expected_id == keepalived_router_id("k8s")
    ids = {keepalived_router_id(f"lab{i}") for i in range(50)}
    assert ids <= set(range(1, 256)) and len(ids) > 40


def test_service_account_key_pair(state, plan):
    sa = ensure_secrets(state, plan, NOW).service_account
    key = serialization.load_pem_private_key(sa.private_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    public = serialization.load_pem_public_key(sa.public.encode())
    assert public.public_numbers() == key.public_key().public_numbers()
    assert sa.public.startswith("-----BEGIN PUBLIC KEY-----")
    assert (state.root / "pki/sa.key").read_text() == sa.private_pem
    assert (state.root / "pki/sa.pub").read_text() == sa.public


def test_second_call_loads_everything_and_rewrites_nothing(state, plan, capsys):
    first = ensure_secrets(state, plan, NOW)
    before = snapshot(state.root)
    second = ensure_secrets(state, plan, NOW + timedelta(days=30))
    assert second == first
    assert snapshot(state.root) == before
    assert capsys.readouterr() == ("", "")  # secrets are never printed


def test_pki_layout_and_modes(state, plan):
    ensure_secrets(state, plan, NOW)
    pki = state.root / "pki"
    files = {str(p.relative_to(pki)) for p in pki.rglob("*") if p.is_file()}
    hostkeys = {f"hostkeys/{n}{s}" for n in plan.node_names for s in ("", ".pub")}
    assert files == {
        "ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key",
        "sa.key", "sa.pub", "admin.crt", "admin.key", "token", "haproxy-stats", "keepalived",
    } | hostkeys
    for path in [pki, *pki.rglob("*")]:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_adding_a_node_adds_only_its_host_key(state):
    small = plan_lab(parse_lab("nodes: {worker: {count: 2}}", "t"))
    bigger = plan_lab(parse_lab("nodes: {worker: {count: 3}}", "t"))
    first = ensure_secrets(state, small, NOW)
    before = snapshot(state.root)
    second = ensure_secrets(state, bigger, NOW)
    after = snapshot(state.root)
    assert set(after) - set(before) == {"pki/hostkeys/worker3", "pki/hostkeys/worker3.pub"}
    assert {name: after[name] for name in before} == before
    assert set(second.host_keys) == set(first.host_keys) | {"worker3"}
    assert {n: k for n, k in second.host_keys.items() if n != "worker3"} == first.host_keys
    assert second.kubernetes_ca == first.kubernetes_ca and second.bootstrap_token == first.bootstrap_token


def test_loosened_modes_are_tightened(state, plan):
    first = ensure_secrets(state, plan, NOW)
    pki = state.root / "pki"
    # Loosened on purpose: ensure_secrets must tighten them back.
    os.chmod(pki / "ca.key", 0o644)
    os.chmod(pki / "hostkeys/master1.pub", 0o666)  # noqa: S103
    os.chmod(pki / "hostkeys", 0o755)  # noqa: S103
    os.chmod(pki, 0o777)  # noqa: S103
    assert ensure_secrets(state, plan, NOW) == first
    for path, mode in ((pki / "ca.key", 0o600), (pki / "hostkeys/master1.pub", 0o600),
                       (pki / "hostkeys", 0o700), (pki, 0o700)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_secret_owned_by_someone_else_is_refused(state, plan):
    ensure_secrets(state, plan, NOW)
    victim = state.root / "pki/etcd/ca.key"
    os.chown(victim, 65534, 65534)
    with pytest.raises(StateError, match=re.escape(str(victim))):
        ensure_secrets(state, plan, NOW)


def test_a_symlinked_secret_is_refused(state, plan, tmp_path):
    ensure_secrets(state, plan, NOW)
    token = state.root / "pki/token"
    elsewhere = tmp_path / "token"
    elsewhere.write_text(token.read_text())
    token.unlink()
    token.symlink_to(elsewhere)
    with pytest.raises(StateError, match="symlink"):
        ensure_secrets(state, plan, NOW)


def test_broken_state_is_reported_not_replaced(state, plan):
    ensure_secrets(state, plan, NOW)
    pki = state.root / "pki"
    (pki / "token").write_text("not-a-token\n")
    with pytest.raises(StateError, match="pki/token"):
        ensure_secrets(state, plan, NOW)
    (pki / "token").unlink()
    (pki / "etcd/ca.key").unlink()
    with pytest.raises(StateError, match=r"etcd/ca\.key is missing"):
        ensure_secrets(state, plan, NOW)
    (pki / "etcd/ca.crt").unlink()
    (pki / "front-proxy-ca.key").write_text(pki.joinpath("ca.key").read_text())
    with pytest.raises(StateError, match=r"front-proxy-ca\.crt"):
        ensure_secrets(state, plan, NOW)


def test_expired_admin_cert_is_reissued_and_nothing_else_changes(state, plan):
    first = ensure_secrets(state, plan, NOW)
    before = snapshot(state.root)
    later = ensure_secrets(state, plan, NOW + timedelta(days=400))
    assert later.admin != first.admin
    cert = x509.load_pem_x509_certificate(later.admin.public.encode())
    assert cert.not_valid_after_utc == NOW + timedelta(days=400 + 365)
    after = snapshot(state.root)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"pki/admin.crt", "pki/admin.key"}


def test_ssh_host_keys_load_back_and_match_their_public_lines(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    assert set(secrets.host_keys) == set(plan.node_names)
    for node in plan.nodes:
        pair = secrets.host_keys[node.name]
        key = serialization.load_ssh_private_key(pair.private_pem.encode(), password=None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        assert pair.public == f"{public.decode()} root@{node.fqdn}"
        assert pair.private_pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert (state.root / "pki/hostkeys" / f"{node.name}.pub").read_text() == pair.public + "\n"
    assert len({pair.public for pair in secrets.host_keys.values()}) == len(plan.nodes)


def test_ssh_user_key_is_the_state_dirs_key(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    assert secrets.ssh_user_key.public == state.ssh_public_key()
    assert secrets.ssh_user_key.private_pem == state.ssh_key_path.read_text()
    assert not (state.root / "pki/id_ed25519").exists()


def test_known_hosts_lines(state, plan):
    secrets = ensure_secrets(state, plan, NOW)
    lines = known_hosts_lines(plan, secrets)
    assert len(lines) == len(plan.nodes)
    by_name = {line.split(",", 1)[0]: line for line in lines}
    internal, nat = plan.lab.internal.cidr.network_address, plan.lab.nat.cidr.network_address
    blob = secrets.host_keys["gateway"].public.split()[1]
    assert by_name["gateway"] == f"gateway,gateway.k8s.internal,{internal + 1},{nat + 2} ssh-ed25519 {blob}"
    blob = secrets.host_keys["master2"].public.split()[1]
    assert by_name["master2"] == f"master2,master2.k8s.internal,{internal + 22} ssh-ed25519 {blob}"
    assert all("root@" not in line for line in lines)
