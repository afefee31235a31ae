"""Per-node configuration files, rendered from the plan: pure functions, one per file.

HAProxy, dnsmasq, keepalived and nftables configurations are assembled from lines here, with values
from the plan and the lab's secrets only, each checked against the characters its file allows.
The env file the node scripts source holds ``KEY=value`` lines whose values are restricted to a
charset that needs no quoting. The kubeadm configuration is YAML and lives in
:mod:`labctl.guest.kubeadm`.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network

import yaml

from labctl.errors import ConfigError, LabError
from labctl.guest.etcd import etcd_env
from labctl.guest.kubeadm import kubernetes_minor, render_kubeadm_config
from labctl.lab.plan import API_PORT, NodePlan, Plan
from labctl.pki.secrets import LabSecrets
from labctl.resources import read_text

__all__ = [
    "CniManifest",
    "cni_manifest",
    "lab_env",
    "render_dnsmasq_conf",
    "render_haproxy_cfg",
    "render_keepalived_conf",
    "render_kubeadm_config",
    "render_lab_env",
    "render_nftables",
]

# Interface names every node's network-config gives its NICs (matched by MAC, see labctl.guest.seed).
NIC_NAMES = {"nat": "wan0", "internal": "lan0"}
LAN, WAN = NIC_NAMES["internal"], NIC_NAMES["nat"]

# Where things live on a node.
ETC_DIR = "/etc/labctl"
ENV_FILE = f"{ETC_DIR}/lab.env"
KUBEADM_CONFIG = f"{ETC_DIR}/kubeadm.yaml"
CLUSTER_CA_COPY = f"{ETC_DIR}/kubernetes-ca.crt"  # the cluster CA certificate on LBs and workers
KUBE_PKI = "/etc/kubernetes/pki"
STATE_DIR = "/var/lib/labctl"
CONSOLE = "/dev/ttyS0"

STATS_PORT = 8404
STATS_USER = "admin"
K8S_APT_URL = "https://pkgs.k8s.io/core:/stable:/v{minor}/deb/"
# Bounded waits (tries x delay): the gateway's DNS, then the apiservers. A master waits for the
# one before it, which itself waited, so the budget grows with its place in the chain.
NETWORK_WAIT_TRIES = 180  # x 5 s
API_WAIT_DELAY = 10
API_WAIT_TRIES = 180
API_WAIT_TRIES_PER_MASTER = 60
KUBEADM_TIMEOUT = 1200  # seconds for one `kubeadm init` or `kubeadm join`

ENV_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")
ENV_VALUE = re.compile(r"[A-Za-z0-9._:/,@=-]*\Z")
CONF_TOKEN = re.compile(r"[A-Za-z0-9._:/@-]+\Z")  # one word in haproxy/dnsmasq/keepalived/nft files


@dataclass(frozen=True)
class CniManifest:
    name: str  # flannel or calico
    url: str
    sha256: str
    pod_cidr: IPv4Network | None  # the CIDR written in the manifest, adapted on the node if it differs


def cni_manifest(plan: Plan) -> CniManifest:
    """The lab's CNI manifest: the pinned catalog entry (network/cni.yaml) or the lab's override."""
    spec = plan.lab.kubernetes
    entry = yaml.safe_load(read_text("network", "cni.yaml"))[spec.cni]
    pod_cidr = IPv4Network(entry["pod_cidr"]) if entry.get("pod_cidr") else None
    if spec.cni_manifest is not None:
        url, digest = spec.cni_manifest
        return CniManifest(spec.cni, url, digest, pod_cidr)
    return CniManifest(spec.cni, entry["url"], entry["sha256"], pod_cidr)


# --- env file ---------------------------------------------------------------------------------


def render_lab_env(plan: Plan, node: NodePlan) -> str:
    """/etc/labctl/lab.env of ``node``: ``KEY=value`` lines, each value in ``[A-Za-z0-9._:/,@=-]``.

    Raises :class:`ConfigError` for a value outside that set (it is never quoted or escaped).
    """
    lines = ["# labctl node parameters, sourced by /usr/local/lib/labctl/bootstrap"]
    for key, value in lab_env(plan, node).items():
        if not ENV_KEY.match(key):
            raise LabError(f"env key {key!r} is not an upper-case shell name")
        if not ENV_VALUE.match(value):
            bad = sorted({c for c in value if not ENV_VALUE.match(c)})
            raise ConfigError(key, f"value {value!r} has characters a node script would not take: {''.join(bad)!r}")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def lab_env(plan: Plan, node: NodePlan) -> dict[str, str]:
    """The parameters of ``node``'s bootstrap scripts, by name."""
    env = {
        "NODE": node.name,
        "LAB_ROLE": node.role,
        "LAB_NAME": plan.lab.name,
        "LAB_USER": plan.lab.user,
        "FQDN": node.fqdn,
        "DOMAIN": plan.lab.domain,
        "INTERNAL_ADDRESS": str(node.internal.address.ip),
        "GATEWAY_ADDRESS": str(plan.gateway_address),
        "API_NAME": plan.api_name,
        "API_ADDRESS": str(plan.api_address),
        "API_PORT": str(API_PORT),
        "LABCTL_STATE_DIR": STATE_DIR,
        "LABCTL_CONSOLE": CONSOLE,
        "NETWORK_WAIT_TRIES": str(NETWORK_WAIT_TRIES),
    }
    if node.role == "lb":
        env["KEEPALIVED"] = "yes" if plan.lab.role("lb").count > 1 else "no"
    if node.role in ("master", "worker"):
        env |= _kubernetes_env(plan, node)
    if node.role == "master":
        env |= _master_env(plan, node)
    if node.role in ("etcd", "master"):
        env |= etcd_env(plan, node)
    return env


def _kubernetes_env(plan: Plan, node: NodePlan) -> dict[str, str]:
    spec = plan.lab.kubernetes
    major, minor = kubernetes_minor(spec.version)
    exact = spec.version.count(".") == 2
    return {
        "K8S_VERSION": spec.version,
        "K8S_APT_URL": K8S_APT_URL.format(minor=f"{major}.{minor}"),
        # apt version glob prefix: 1.31.4-* (that release) or 1.31.* (the newest 1.31)
        "K8S_PKG_VERSION": f"{spec.version}-" if exact else f"{spec.version}.",
        "POD_CIDR": str(spec.pod_cidr),
        "SERVICE_CIDR": str(spec.service_cidr),
        "KUBEADM_CONFIG": KUBEADM_CONFIG,
        "KUBEADM_TIMEOUT": str(KUBEADM_TIMEOUT),
        # Masters check TLS with the CA kubeadm uses; workers with the copy in /etc/labctl.
        "API_CA": f"{KUBE_PKI}/ca.crt" if node.role == "master" else CLUSTER_CA_COPY,
        "API_WAIT_TRIES": str(_api_wait_tries(node)),
        "API_WAIT_DELAY": str(API_WAIT_DELAY),
    }


def _api_wait_tries(node: NodePlan) -> int:
    if node.role == "master" and node.index > 1:
        return API_WAIT_TRIES + API_WAIT_TRIES_PER_MASTER * (node.index - 2)
    return API_WAIT_TRIES


def _master_env(plan: Plan, node: NodePlan) -> dict[str, str]:
    previous = plan.node(f"master{node.index - 1}").internal.address.ip if node.index > 1 else None
    cni = cni_manifest(plan)
    return {
        "MASTER_INDEX": str(node.index),
        "PREVIOUS_MASTER_ADDRESS": str(previous or ""),
        "CNI": cni.name,
        "CNI_URL": cni.url,
        "CNI_SHA256": cni.sha256,
        "CNI_POD_CIDR": str(cni.pod_cidr or ""),
    }


# --- gateway ----------------------------------------------------------------------------------


def render_dnsmasq_conf(plan: Plan) -> str:
    """dnsmasq on the gateway's internal NIC: the lab's names, everything else forwarded upstream."""
    upstream = plan.network("nat").host_address
    if upstream is None:
        raise LabError("the NAT network has no host address to forward DNS to")
    domain = plan.lab.domain
    lines = [
        f"# labctl: DNS of lab {plan.lab.name} on the internal network; other names go upstream.",
        f"interface={LAN}",
        "except-interface=lo",
        "bind-dynamic",
        "no-resolv",
        "no-hosts",
        "domain-needed",
        "bogus-priv",
        f"server={upstream.ip}",
        f"local=/{domain}/",
        f"domain={domain}",
        "cache-size=1000",
    ]
    for node in plan.nodes:
        lines.append(f"host-record={node.fqdn},{node.name},{node.internal.address.ip}")
    lines.append(f"host-record={plan.api_name},{plan.api_address}")
    return _conf(lines)


def render_nftables(plan: Plan) -> str:
    """The gateway's whole ruleset: masquerade internal → uplink, forward only that and its replies."""
    cidr = plan.network("internal").cidr
    lines = [
        "#!/usr/sbin/nft -f",
        f"# labctl: gateway of lab {plan.lab.name}. {LAN} = internal {cidr}, {WAN} = NAT uplink.",
        "flush ruleset",
        "",
        "table inet labctl {",
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        '        iifname "lo" accept',
        "        ct state established,related accept",
        "        ct state invalid drop",
        "        meta l4proto { icmp, ipv6-icmp } accept",
        "        tcp dport 22 accept",
        f'        iifname "{LAN}" ip saddr {cidr} udp dport 53 accept',
        f'        iifname "{LAN}" ip saddr {cidr} tcp dport 53 accept',
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        "        ct state established,related accept",
        "        ct state invalid drop",
        f'        iifname "{LAN}" oifname "{WAN}" ip saddr {cidr} accept',
        "    }",
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        f'        oifname "{WAN}" ip saddr {cidr} masquerade',
        "    }",
        "}",
    ]
    return _conf(lines)


# --- load balancers ---------------------------------------------------------------------------


def render_haproxy_cfg(plan: Plan, node: NodePlan, secrets: LabSecrets, ca_file: str = CLUSTER_CA_COPY) -> str:
    """HAProxy on ``node``: TCP :6443 → every master, checked by GET /readyz over verified TLS.

    The stats page listens on the node's internal address only, behind the lab's generated password.
    """
    password = _token(secrets.haproxy_stats_password, "haproxy stats password")
    lines = [
        f"# labctl: load balancer {node.name} of lab {plan.lab.name}: the Kubernetes API on :{API_PORT}.",
        "global",
        "    log /dev/log local0",
        "    maxconn 4096",
        "    user haproxy",
        "    group haproxy",
        "    daemon",
        "",
        "defaults",
        "    log global",
        "    mode tcp",
        "    option tcplog",
        "    option dontlognull",
        "    retries 3",
        "    timeout connect 5s",
        "    # kubectl watches, logs and exec streams keep connections open for long",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 5s",
        "",
        "frontend kube-apiserver",
        f"    bind :{API_PORT}",
        "    default_backend kube-apiserver",
        "",
        "backend kube-apiserver",
        "    balance roundrobin",
        "    option httpchk",
        "    http-check send meth GET uri /readyz",
        "    http-check expect status 200",
        f"    default-server check check-ssl verify required ca-file {_token(ca_file, 'CA file')}"
        " inter 5s fall 3 rise 2",
    ]
    for master in _role_nodes(plan, "master"):
        lines.append(f"    server {master.name} {master.internal.address.ip}:{API_PORT}")
    lines += [
        "",
        "listen stats",
        f"    bind {node.internal.address.ip}:{STATS_PORT}",
        "    mode http",
        "    option httplog",
        "    stats enable",
        "    stats uri /",
        "    stats refresh 10s",
        f"    stats auth {STATS_USER}:{password}",
    ]
    return _conf(lines)


def render_keepalived_conf(plan: Plan, node: NodePlan, secrets: LabSecrets) -> str:
    """keepalived on a load balancer of a two-LB lab: the API VIP, lb1 preferred, unicast VRRP.

    The instance goes to FAULT (and gives up the VIP) while no haproxy process runs on the node.
    """
    peers = [lb for lb in _role_nodes(plan, "lb") if lb.name != node.name]
    if node.role != "lb" or not peers:
        raise LabError(f"keepalived runs on the load balancers of a lab with two of them, not on {node.name}")
    router_id = secrets.keepalived_router_id
    if not 1 <= router_id <= 255:
        raise LabError(f"keepalived virtual_router_id {router_id} is outside 1..255")
    password = _token(secrets.keepalived_password, "keepalived password")
    prefix = plan.network("internal").cidr.prefixlen
    lines = [
        f"# labctl: API VIP {plan.api_address} of lab {plan.lab.name} on {node.name}.",
        "global_defs {",
        f"    router_id {node.name}",
        "    enable_script_security",
        "    script_user root",
        "}",
        "",
        "vrrp_script chk_haproxy {",
        '    script "/usr/bin/pgrep -x haproxy"',
        "    interval 2",
        "    fall 2",
        "    rise 2",
        "}",
        "",
        "vrrp_instance api {",
        "    state MASTER" if node.index == 1 else "    state BACKUP",
        f"    interface {LAN}",
        f"    virtual_router_id {router_id}",
        f"    priority {160 - 10 * node.index}",
        "    advert_int 1",
        f"    unicast_src_ip {node.internal.address.ip}",
        "    unicast_peer {",
        *(f"        {peer.internal.address.ip}" for peer in peers),
        "    }",
        "    authentication {",
        "        auth_type PASS",
        f"        auth_pass {password}",
        "    }",
        "    virtual_ipaddress {",
        f"        {plan.api_address}/{prefix} dev {LAN}",
        "    }",
        "    track_script {",
        "        chk_haproxy",
        "    }",
        "}",
    ]
    return _conf(lines)


# --- helpers ----------------------------------------------------------------------------------


def _role_nodes(plan: Plan, role: str) -> list[NodePlan]:
    return [node for node in plan.nodes if node.role == role]


def _token(value: str, what: str) -> str:
    """``value`` as one word of a config file; anything else is a bug or tampered state, not data."""
    if CONF_TOKEN.match(value):
        return value
    raise LabError(f"{what} has characters a configuration file cannot take safely")


def _conf(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"

