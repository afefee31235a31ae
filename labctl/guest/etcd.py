"""etcd in the lab: who the members are, each external member's configuration file, the files its seed
carries, and kubeadm's ``etcd.external`` section for the masters (pure).

Stacked (the default): every master runs a member that kubeadm makes (a static pod, kubeadm's certificates).
External: nodes ``etcd1..N`` run Debian's ``etcd-server`` as a systemd unit with the configuration below and
certificates made on the host (:mod:`labctl.pki.etcd`); the masters talk to every member with the apiserver's
client certificate. Either way the masters carry ``etcdctl`` (Debian's ``etcd-client``), which is how
``labctl etcd`` and ``labctl drill`` reach etcd: over ssh, with kubeadm's file layout::

    /etc/kubernetes/pki/etcd/ca.crt                                  the etcd CA (masters and members)
    /etc/kubernetes/pki/apiserver-etcd-client.{crt,key}              masters (external: from the host, by
                                                                     way of the seed's /etc/labctl/pki)
    /etc/kubernetes/pki/etcd/{server,peer,healthcheck-client}.{crt,key}   external members
    /etc/labctl/etcd.yaml                                            an external member's etcd configuration
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from labctl.errors import LabError, StateError
from labctl.lab.plan import NodePlan, Plan
from labctl.lab.versions import ETCD_BY_DEBIAN
from labctl.pki.etcd import APISERVER_CLIENT_STEM, MEMBER_FILES, EtcdCerts, TlsPair

CLIENT_PORT = 2379
PEER_PORT = 2380
KUBE_PKI = "/etc/kubernetes/pki"
ETCD_PKI = f"{KUBE_PKI}/etcd"
ETCD_CA = f"{ETCD_PKI}/ca.crt"
APISERVER_CLIENT_CERT = f"{KUBE_PKI}/{APISERVER_CLIENT_STEM}.crt"
APISERVER_CLIENT_KEY = f"{KUBE_PKI}/{APISERVER_CLIENT_STEM}.key"
# Masters: what the seed puts under KUBE_PKI is kept here and copied there before every kubeadm run
# (`kubeadm reset` empties KUBE_PKI); the wait for external members reads these copies.
SEED_PKI = "/etc/labctl/pki"
SEED_ETCD_CA = f"{SEED_PKI}/etcd/ca.crt"
SEED_CLIENT_CERT = f"{SEED_PKI}/{APISERVER_CLIENT_STEM}.crt"
SEED_CLIENT_KEY = f"{SEED_PKI}/{APISERVER_CLIENT_STEM}.key"
STAGED_PKI = "/etc/labctl/etcd-pki"  # an external member's certificates, installed by etcd.sh for the etcd user
ETCD_CONFIG = "/etc/labctl/etcd.yaml"
ETCD_DROPIN = "/etc/labctl/etcd-service.conf"  # installed as /etc/systemd/system/etcd.service.d/labctl.conf
DATA_DIR = "/var/lib/etcd/labctl"  # not Debian's default/: the package may start a throwaway member there
# etcd's defaults (100 ms, 1 s) suit a data centre; VMs under emulation or on a busy laptop stall for
# longer than a second, and a stalled leader would be deposed again and again.
HEARTBEAT_MS = 500
ELECTION_MS = 5000
MEMBER_WAIT_TRIES = 180  # x 5 s: a member is healthy once a majority has booted
HEALTHY_WAIT_TRIES = 180  # x 5 s: master1 waits for every member before `kubeadm init` (kubeadm's preflight)


@dataclass(frozen=True)
class Member:
    """One etcd member as a client or a peer reaches it."""

    name: str
    node: str  # the node it runs on (the same name here)
    address: str

    @property
    def client_url(self) -> str:
        return f"https://{self.address}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.address}:{PEER_PORT}"


def is_external(plan: Plan) -> bool:
    return plan.lab.kubernetes.etcd == "external"


def etcd_members(plan: Plan) -> tuple[Member, ...]:
    """The lab's etcd members: the etcd nodes (external) or the masters (stacked), in plan order."""
    nodes = plan.nodes_of("etcd") if is_external(plan) else plan.nodes_of("master")
    return tuple(Member(node.name, node.name, str(node.internal.address.ip)) for node in nodes)


def endpoints(plan: Plan) -> str:
    """Every member's client URL, comma-separated (etcdctl's ``--endpoints``)."""
    return ",".join(member.client_url for member in etcd_members(plan))


def initial_cluster(plan: Plan) -> str:
    """``etcd1=https://…:2380,…``: every member, as each one starts with it (and a restore rebuilds it)."""
    return ",".join(f"{member.name}={member.peer_url}" for member in etcd_members(plan))


def cluster_token(plan: Plan) -> str:
    return f"labctl-{plan.lab.name}"


def quorum(count: int) -> int:
    """How many members are a majority of ``count``."""
    return count // 2 + 1


def etcd_config(plan: Plan, node: NodePlan) -> dict[str, Any]:
    """The configuration file of external member ``node`` (etcd's ``--config-file`` YAML)."""
    if node.role != "etcd" or not is_external(plan):
        raise LabError(f"{node.name} is not a member of an external etcd")
    me = next(member for member in etcd_members(plan) if member.node == node.name)

    def tls(stem: str) -> dict[str, Any]:
        return {"cert-file": f"{ETCD_PKI}/{stem}.crt", "key-file": f"{ETCD_PKI}/{stem}.key",
                "client-cert-auth": True, "trusted-ca-file": ETCD_CA}

    return {
        "name": me.name,
        "data-dir": DATA_DIR,
        "listen-peer-urls": me.peer_url,
        "listen-client-urls": f"{me.client_url},https://127.0.0.1:{CLIENT_PORT}",
        "advertise-client-urls": me.client_url,
        "initial-advertise-peer-urls": me.peer_url,
        "initial-cluster": initial_cluster(plan),
        "initial-cluster-token": cluster_token(plan),
        "initial-cluster-state": "new",
        "heartbeat-interval": HEARTBEAT_MS,
        "election-timeout": ELECTION_MS,
        "client-transport-security": tls("server"),
        "peer-transport-security": tls("peer"),
        "logger": "zap",
        "log-outputs": ["stderr"],
    }


def render_etcd_config(plan: Plan, node: NodePlan) -> str:
    return "# labctl: etcd member configuration (etcd --config-file)\n" + yaml.safe_dump(
        etcd_config(plan, node), sort_keys=False, default_flow_style=False)


def etcd_env(plan: Plan, node: NodePlan) -> dict[str, str]:
    """The etcd parameters of ``node``'s bootstrap scripts: members and masters."""
    etcd = ETCD_BY_DEBIAN.get(plan.lab.image.debian or "")
    env = {"ETCD_TOPOLOGY": plan.lab.kubernetes.etcd, "ETCD_PKG_VERSION": f"{etcd}." if etcd else ""}
    if node.role == "etcd":
        env |= {"ETCD_PKI": ETCD_PKI, "ETCD_STAGED_PKI": STAGED_PKI, "ETCD_CONFIG": ETCD_CONFIG,
                "ETCD_DROPIN": ETCD_DROPIN, "ETCD_WAIT_TRIES": str(MEMBER_WAIT_TRIES)}
    if node.role == "master" and is_external(plan):
        env |= {"ETCD_ENDPOINTS": endpoints(plan), "ETCD_CA": SEED_ETCD_CA, "ETCD_CLIENT_CERT": SEED_CLIENT_CERT,
                "ETCD_CLIENT_KEY": SEED_CLIENT_KEY, "ETCD_WAIT_TRIES": str(HEALTHY_WAIT_TRIES)}
    return env


def external_etcd_section(plan: Plan) -> dict[str, Any]:
    """ClusterConfiguration ``etcd.external``: every member, the CA and the apiserver's client certificate."""
    return {"external": {"endpoints": [member.client_url for member in etcd_members(plan)], "caFile": ETCD_CA,
                         "certFile": APISERVER_CLIENT_CERT, "keyFile": APISERVER_CLIENT_KEY}}


def member_files(certs: EtcdCerts | None, ca_cert_pem: str, node: NodePlan) -> dict[str, tuple[str, bool]]:
    """Path -> (content, secret) of an external member's staged certificates."""
    mine = _certs(certs).members.get(node.name)
    if mine is None:
        raise StateError(f"no etcd certificates for {node.name}", "ensure_secrets makes them for every member")
    pairs: dict[str, TlsPair] = dict(zip(MEMBER_FILES, (mine.server, mine.peer, mine.healthcheck_client), strict=True))
    files = {f"{STAGED_PKI}/ca.crt": (ca_cert_pem, False)}
    for stem, pair in pairs.items():
        files[f"{STAGED_PKI}/{stem}.crt"] = (pair.cert_pem, False)
        files[f"{STAGED_PKI}/{stem}.key"] = (pair.key_pem, True)
    return files


def master_client_files(certs: EtcdCerts | None) -> dict[str, tuple[str, bool]]:
    """Path -> (content, secret) of the apiserver's etcd client certificate on a master (external etcd), in
    the seed's copy of kubeadm's directory."""
    client = _certs(certs).apiserver_client
    return {SEED_CLIENT_CERT: (client.cert_pem, False), SEED_CLIENT_KEY: (client.key_pem, True)}


def _certs(certs: EtcdCerts | None) -> EtcdCerts:
    if certs is None:
        raise StateError("the lab has no external etcd certificates", "ensure_secrets makes them for kubernetes.etcd: "
                         "external")
    return certs
