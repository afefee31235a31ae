"""The cryptography behind :mod:`labctl.pki.secrets`: keys and certificates in, PEM text out. No disk, no clock.

Every function takes and returns PEM (or OpenSSH) text, so :mod:`labctl.pki.secrets` stores exactly what it got.
Parsing errors surface as ``ValueError``/``TypeError`` from cryptography; the caller names the file.
"""

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RSA_BITS = 2048  # kubeadm's default for its CAs, sa.key and client certs
CA_VALIDITY = timedelta(days=3650)  # kubeadm's CA lifetime
CLIENT_VALIDITY = timedelta(days=365)  # kubeadm's leaf lifetime
BACKDATE = timedelta(minutes=5)  # tolerate a node clock slightly behind the host's


def new_rsa_key_pem() -> str:
    """A fresh RSA 2048 private key, PKCS#8 PEM (what kubeadm reads as ca.key or sa.key)."""
    return _private_pem(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS))


def public_key_pem(private_pem: str) -> str:
    """The SubjectPublicKeyInfo PEM of a PEM private key (kubeadm's sa.pub)."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signing certificates for a CA; signing and key exchange for a TLS client."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=not ca, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def new_ca(common_name: str, now: datetime) -> tuple[str, str]:
    """A self-signed RSA CA valid for ten years from ``now``: ``(cert_pem, key_pem)``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), now, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _private_pem(key)


def new_client_cert(
    ca_cert_pem: str, ca_key_pem: str, common_name: str, organization: str, now: datetime
) -> tuple[str, str]:
    """A client certificate (EKU clientAuth) for ``CN=common_name, O=organization``: ``(cert_pem, key_pem)``."""
    return new_leaf_cert(ca_cert_pem, ca_key_pem, common_name, now, organization=organization)


# What a leaf certificate is for, as extended key usages. kubeadm gives etcd's server certificate clientAuth
# too (etcd's own gRPC gateway dials the server with it), and a peer certificate serves and dials.
USAGES = {"server": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
          "peer": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
          "client": (ExtendedKeyUsageOID.CLIENT_AUTH,)}


def new_leaf_cert(
    ca_cert_pem: str, ca_key_pem: str, common_name: str, now: datetime, *, organization: str | None = None,
    usage: str = "client", dns_names: Sequence[str] = (), addresses: Sequence[str] = (),
) -> tuple[str, str]:
    """A certificate signed by the CA for ``usage`` (server, client or peer: its extended key usages),
    with ``dns_names`` and IP ``addresses`` as subject alternative names: ``(cert_pem, key_pem)``."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = _issuer_key(ca_key_pem)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    subject = x509.Name([*names, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), now, CLIENT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(USAGES[usage])), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    alt: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt += [x509.IPAddress(ip_address(address)) for address in addresses]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return _cert_pem(builder.sign(ca_key, hashes.SHA256())), _private_pem(key)


def cert_identity(cert_pem: str) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(common name, DNS names, IP addresses, extended key usages by name) of a certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(alt.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in alt.get_values_for_type(x509.IPAddress)
                    if isinstance(ip, IPv4Address | IPv6Address))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = tuple(oid._name for oid in ekus)
    except x509.ExtensionNotFound:
        usages = ()
    return str(common_name), dns, ips, usages


def check_key_pair(cert_pem: str, key_pem: str) -> None:
    """Raise ``ValueError`` unless ``key_pem`` is the private key of ``cert_pem``'s public key."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if _spki_der(key.public_key()) != _spki_der(cert.public_key()):
        raise ValueError("the private key does not belong to the certificate")


def issued_and_valid(cert_pem: str, ca_cert_pem: str, now: datetime) -> bool:
    """Whether ``cert_pem`` was signed by the CA in ``ca_cert_pem`` and is still valid at ``now``."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def ca_cert_hash(cert_pem: str) -> str:
    """kubeadm's ``--discovery-token-ca-cert-hash``: SHA-256 of the CA's DER SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return "sha256:" + hashlib.sha256(_spki_der(cert.public_key())).hexdigest()


def new_ssh_host_key_pem() -> str:
    """A fresh ed25519 key in OpenSSH private key format (cloud-init's ``ssh_keys.ed25519_private``)."""
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()


def ssh_public_line(private_pem: str, comment: str = "") -> str:
    """The one-line OpenSSH public key of an ed25519 OpenSSH private key, with ``comment`` if given."""
    key = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"expected an ed25519 key, found {type(key).__name__}")
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: rsa.RSAPublicKey, now: datetime, validity: timedelta
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _issuer_key(key_pem: str) -> CertificateIssuerPrivateKeyTypes:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise TypeError(f"a CA key must be RSA, ECDSA or ed25519, not {type(key).__name__}")
    return key


def _spki_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()
