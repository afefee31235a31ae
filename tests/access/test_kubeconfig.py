"""The host's kubeconfig: parsed back, its client certificate chaining to the lab CA, merged and written 0600."""

import base64
import socket
import stat

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labctl.access import kubeconfig as kc
from labctl.errors import ConfigError
from labctl.lab.config import load_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets


@pytest.fixture(scope="module")
def plan():
    return plan_lab(load_lab())


@pytest.fixture(scope="module")
def secrets(plan, tmp_path_factory):
    return ensure_secrets(LabState.for_lab(plan.lab.name, base=tmp_path_factory.mktemp("data")), plan)


def resolver(answers):
    """A getaddrinfo stand-in: name -> addresses, anything else fails like an unknown name."""
    def resolve(host, port):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in answers[host]]
    return resolve


def test_server_is_the_api_name_when_it_resolves_to_the_api_address(plan):
    assert kc.choose_server(plan, resolver({plan.api_name: [str(plan.api_address)]})) == "https://api.k8s.internal:6443"


@pytest.mark.parametrize("answers", [{}, {"api.k8s.internal": ["198.51.100.7"]}])
def test_server_falls_back_to_the_api_address(plan, answers):
    """Unresolvable, or resolving somewhere else (a wildcard DNS): use the address; nothing edits /etc/hosts."""
    assert kc.choose_server(plan, resolver(answers)) == f"https://{plan.api_address}:6443"


def test_kubeconfig_parses_back_and_the_client_certificate_chains_to_the_ca(plan, secrets):
    server = f"https://{plan.api_address}:6443"
    data = yaml.safe_load(kc.dump_kubeconfig(kc.kubeconfig_dict(plan, secrets, server)))
    assert data["apiVersion"] == "v1" and data["kind"] == "Config"
    assert data["current-context"] == "labctl-k8s"
    (cluster,) = data["clusters"]
    (user,) = data["users"]
    (context,) = data["contexts"]
    assert context == {"name": "labctl-k8s", "context": {"cluster": "labctl-k8s", "user": "labctl-k8s-admin"}}
    assert cluster["name"] == "labctl-k8s" and user["name"] == "labctl-k8s-admin"
    assert cluster["cluster"]["server"] == server
    assert cluster["cluster"]["tls-server-name"] == plan.api_name  # the certificate names the API, not the IP

    ca = x509.load_pem_x509_certificate(base64.b64decode(cluster["cluster"]["certificate-authority-data"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["user"]["client-certificate-data"]))
    key = serialization.load_pem_private_key(base64.b64decode(user["user"]["client-key-data"]), password=None)
    assert ca.public_bytes(serialization.Encoding.PEM).decode() == secrets.kubernetes_ca.cert_pem
    assert cert.issuer == ca.subject
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                           cert.signature_hash_algorithm)  # raises InvalidSignature if it does not chain
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_no_tls_server_name_when_the_server_is_the_name(plan, secrets):
    data = kc.kubeconfig_dict(plan, secrets, "https://api.k8s.internal:6443")
    assert "tls-server-name" not in data["clusters"][0]["cluster"]


def entry(section, name, **body):
    key = {"clusters": "cluster", "users": "user", "contexts": "context"}[section]
    return {"name": name, key: body}


def test_merge_replaces_the_labs_entries_keeps_the_rest_and_switches_context(plan, secrets):
    new = kc.kubeconfig_dict(plan, secrets, "https://api.k8s.internal:6443")
    existing = {
        "apiVersion": "v1", "kind": "Config", "preferences": {"colors": True},
        "clusters": [entry("clusters", "prod", server="https://prod:6443"),
                     entry("clusters", "labctl-k8s", server="https://stale:6443")],
        "users": [entry("users", "me", token="t"), entry("users", "labctl-k8s-admin", token="old")],
        "contexts": [entry("contexts", "prod", cluster="prod", user="me")],
        "current-context": "prod",
    }
    merged = kc.merge_kubeconfig(existing, new)
    assert [c["name"] for c in merged["clusters"]] == ["prod", "labctl-k8s"]
    assert merged["clusters"][1] == new["clusters"][0]
    assert [u["name"] for u in merged["users"]] == ["me", "labctl-k8s-admin"]
    assert merged["users"][1] == new["users"][0]
    assert [c["name"] for c in merged["contexts"]] == ["prod", "labctl-k8s"]
    assert merged["current-context"] == "labctl-k8s" and merged["preferences"] == {"colors": True}
    assert existing["current-context"] == "prod"  # the input is not modified
    assert kc.merge_kubeconfig(None, new) == new


def test_default_merge_target(tmp_path):
    assert kc.default_merge_target({}, tmp_path) == tmp_path / ".kube" / "config"
    assert kc.default_merge_target({"KUBECONFIG": ":/a/one:/b/two"}, tmp_path).as_posix() == "/a/one"


def test_write_is_private_creates_kube_dir_and_follows_a_symlink(plan, secrets, tmp_path):
    data = kc.kubeconfig_dict(plan, secrets, "https://api.k8s.internal:6443")
    target = tmp_path / ".kube" / "config"
    assert kc.write_kubeconfig(target, data) == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert kc.read_kubeconfig(target) == data
    real = tmp_path / "elsewhere"
    link = tmp_path / "link"
    link.symlink_to(real)
    kc.write_kubeconfig(link, data)
    assert link.is_symlink() and kc.read_kubeconfig(real) == data


def test_read_refuses_what_is_not_a_kubeconfig(tmp_path):
    path = tmp_path / "config"
    assert kc.read_kubeconfig(path) is None
    path.write_text("")
    assert kc.read_kubeconfig(path) is None
    path.write_text("clusters: {a: 1}\n")
    with pytest.raises(ConfigError, match="not a kubeconfig"):
        kc.read_kubeconfig(path)
    path.write_text("clusters: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        kc.read_kubeconfig(path)
