"""The certificates of an external etcd, made on the host from the lab's etcd CA (kubeadm's "external etcd" set).

Each member gets a server certificate (what clients see on :2379), a peer certificate (member to member on
:2380) and a healthcheck client certificate (its own ``etcdctl``); the apiservers share one client
certificate. Names and usages follow kubeadm's, so a learner finds what kubeadm's guide describes::

    pki/etcd/<member>/server.{crt,key}              CN=<member>, SANs: name, FQDN, localhost, address, 127.0.0.1, ::1
    pki/etcd/<member>/peer.{crt,key}                the same names; serverAuth + clientAuth
    pki/etcd/<member>/healthcheck-client.{crt,key}  CN=kube-etcd-healthcheck-client, clientAuth
    pki/apiserver-etcd-client.{crt,key}             CN=kube-apiserver-etcd-client, clientAuth

A certificate is made once and kept; it is made again only when it no longer chains to the etcd CA, has
expired, or names other SANs than the plan gives its member. Stacked labs have none of these: kubeadm
makes the stacked members' certificates on the masters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import UnsupportedAlgorithm

from labctl.lab.plan import NodePlan, Plan
from labctl.pki.x509 import cert_identity, check_key_pair, issued_and_valid, new_leaf_cert

APISERVER_CLIENT_CN = "kube-apiserver-etcd-client"
HEALTHCHECK_CLIENT_CN = "kube-etcd-healthcheck-client"
APISERVER_CLIENT_STEM = "apiserver-etcd-client"
MEMBER_FILES = ("server", "peer", "healthcheck-client")  # pki/etcd/<member>/<stem>.{crt,key}

Read = Callable[[str], "str | None"]
Write = Callable[[str, str], None]


@dataclass(frozen=True)
class TlsPair:
    cert_pem: str
    key_pem: str


@dataclass(frozen=True)
class EtcdMemberCerts:
    server: TlsPair
    peer: TlsPair
    healthcheck_client: TlsPair


@dataclass(frozen=True)
class EtcdCerts:
    """Every certificate an external etcd needs, by member name, and the apiservers' client certificate."""

    members: Mapping[str, EtcdMemberCerts]
    apiserver_client: TlsPair


@dataclass(frozen=True)
class Wanted:
    """What one certificate must be: its CN, usage and SANs."""

    common_name: str
    usage: str
    dns_names: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()


def member_names(node: NodePlan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) a member's server and peer certificates carry (kubeadm's, plus the FQDN)."""
    return (node.name, node.fqdn, "localhost"), (str(node.internal.address.ip), "127.0.0.1", "::1")


def wanted_member_certs(node: NodePlan) -> dict[str, Wanted]:
    dns, ips = member_names(node)
    return {"server": Wanted(node.name, "server", dns, ips), "peer": Wanted(node.name, "peer", dns, ips),
            "healthcheck-client": Wanted(HEALTHCHECK_CLIENT_CN, "client")}


def ensure_etcd_certs(plan: Plan, ca_cert_pem: str, ca_key_pem: str, read: Read, write: Write,
                      now: datetime) -> EtcdCerts | None:
    """The lab's external etcd certificates (None for a stacked lab), read through ``read(name)`` and made
    through ``write(name, text)`` where missing or unusable; names are relative to the lab's pki dir."""
    members = plan.nodes_of("etcd")
    if plan.lab.kubernetes.etcd != "external" or not members:
        return None

    def pair(stem: str, wanted: Wanted) -> TlsPair:
        return _ensure_pair(stem, wanted, ca_cert_pem, ca_key_pem, read, write, now)

    certs = {}
    for node in members:
        made = {name: pair(f"etcd/{node.name}/{name}", wanted) for name, wanted in wanted_member_certs(node).items()}
        certs[node.name] = EtcdMemberCerts(made["server"], made["peer"], made["healthcheck-client"])
    client = pair(APISERVER_CLIENT_STEM, Wanted(APISERVER_CLIENT_CN, "client"))
    return EtcdCerts(certs, client)


def _ensure_pair(stem: str, wanted: Wanted, ca_cert_pem: str, ca_key_pem: str, read: Read, write: Write,
                 now: datetime) -> TlsPair:
    cert, key = read(f"{stem}.crt"), read(f"{stem}.key")
    if cert is None or key is None or not _still_good(cert, key, wanted, ca_cert_pem, now):
        cert, key = new_leaf_cert(ca_cert_pem, ca_key_pem, wanted.common_name, now, usage=wanted.usage,
                                  dns_names=wanted.dns_names, addresses=wanted.addresses)
        write(f"{stem}.key", key)
        write(f"{stem}.crt", cert)  # last: a key without its certificate is remade next time
    return TlsPair(cert, key)


def _still_good(cert: str, key: str, wanted: Wanted, ca_cert_pem: str, now: datetime) -> bool:
    try:
        check_key_pair(cert, key)
        common_name, dns, ips, _ = cert_identity(cert)
        return (issued_and_valid(cert, ca_cert_pem, now) and common_name == wanted.common_name
                and set(dns) == set(wanted.dns_names) and set(ips) == set(wanted.addresses))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
