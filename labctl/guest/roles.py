"""Per-node configuration files, rendered from the plan: pure functions, one per file.

HAProxy, dnsmasq, keepalived and nftables configurations are assembled from lines here, with values
from the plan and the lab's secrets only, each checked against the characters its file allows.
The env file the node scripts source holds ``KEY=value`` lines whose values are restricted to a
charset that needs no quoting. The kubeadm configuration is YAML and lives in
:mod:`labctl.guest.kubeadm`.
"""

import hashlib
import re
from collections.abc import Iterable

from labctl.errors import ConfigError, LabError
from labctl.guest.etcd import SEED_PKI, etcd_env
from labctl.guest.kubeadm import CRI_SOCKET, kubernetes_minor, render_kubeadm_config
from labctl.lab.plan import API_PORT, NodePlan, Plan
from labctl.pki.secrets import LabSecrets

__all__ = [
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
CNI_MANIFEST = f"{ETC_DIR}/cni.yaml"  # master1: the manifest labctl fetched and adapted
K8S_APT_KEY = f"{ETC_DIR}/kubernetes-apt-key.asc"  # the package repository's key, when lab.yaml gives a file
STATE_DIR = "/var/lib/labctl"
CONSOLE = "/dev/ttyS0"

STATS_PORT = 8404
BEACON_PORT = 8405  # every node's phase of this boot, for the nodes that wait on it (HTTP)
STATS_USER = "admin"
K8S_APT_URL = "https://pkgs.k8s.io/core:/stable:/v{minor}/deb/"
WAIT_DELAY = 5  # seconds between two tries of any wait on another node
APT_TRIES = 3  # apt-get install attempts (transient mirror errors)

ENV_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")
ENV_VALUE = re.compile(r"[A-Za-z0-9._:/,@=-]*\Z")
CONF_TOKEN = re.compile(r"[A-Za-z0-9._:/@-]+\Z")  # one word in haproxy/dnsmasq/keepalived/nft files


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
    """The parameters of ``node``'s bootstrap scripts, by name; every wait from the plan's budget table."""
    budget = plan.budget
    mirror = plan.lab.apt_mirror
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
        "BEACON_PORT": str(BEACON_PORT),
        "WAIT_DELAY": str(WAIT_DELAY),
        "APT_LOCK_WAIT": str(budget.budget.apt_lock),
        "APT_TRIES": str(APT_TRIES),
        "APT_MIRROR": mirror.url if mirror else "",
        "APT_MIRROR_UPDATES": "yes" if mirror and mirror.updates else "no",
        "APT_SECURITY_MIRROR": (mirror.security or "") if mirror else "",
    }
    waits = budget.nodes[node.name].waits
    if "dns" in waits:
        env |= {"DNS_WAIT": str(waits["dns"]), "DNS_DEPENDS": _depends(plan, ["gateway"])}
    if node.role == "lb":
        env["KEEPALIVED"] = "yes" if plan.lab.role("lb").count > 1 else "no"
    if node.role in ("master", "worker"):
        env |= _kubernetes_env(plan, node)
    if node.role == "master":
        env |= _master_env(plan, node)
    if node.role in ("etcd", "master"):
        env |= etcd_env(plan, node)
    return env


def k8s_apt_url(plan: Plan) -> str:
    """The Kubernetes packages' repository: lab.yaml's, else upstream's for the minor."""
    major, minor = kubernetes_minor(plan.lab.kubernetes.version)
    return plan.lab.kubernetes.apt_url or K8S_APT_URL.format(minor=f"{major}.{minor}")


def _kubernetes_env(plan: Plan, node: NodePlan) -> dict[str, str]:
    spec = plan.lab.kubernetes
    exact = spec.version.count(".") == 2
    apt_url = k8s_apt_url(plan)
    env = {
        "K8S_VERSION": spec.version,
        "K8S_APT_URL": apt_url,
        # The key: fetched by the node from this URL, or (empty) the file the seed carries.
        "K8S_APT_KEY_URL": "" if spec.apt_key else spec.apt_key_url or f"{apt_url}Release.key",
        # apt version glob prefix: 1.35.4-* (that release) or 1.35.* (the newest 1.35)
        "K8S_PKG_VERSION": f"{spec.version}-" if exact else f"{spec.version}.",
        "POD_CIDR": str(spec.pod_cidr),
        "SERVICE_CIDR": str(spec.service_cidr),
        "KUBEADM_CONFIG": KUBEADM_CONFIG,
        "KUBEADM_TIMEOUT": str(plan.budget.budget.kubeadm.command),
        "CRI_SOCKET": CRI_SOCKET,
        # Masters check TLS with the CA kubeadm uses; workers with the copy in /etc/labctl.
        # The seed's copy on a master: /etc/kubernetes/pki is filled only just before its kubeadm runs.
        "API_CA": f"{SEED_PKI}/ca.crt" if node.role == "master" else CLUSTER_CA_COPY,
    }
    if node.role == "worker":
        env |= {"API_WAIT": str(plan.budget.nodes[node.name].waits["api"]),
                "API_DEPENDS": _depends(plan, ["master1", *_role_names(plan, "lb")])}
    return env


def _master_env(plan: Plan, node: NodePlan) -> dict[str, str]:
    waits = plan.budget.nodes[node.name].waits
    env = {"MASTER_INDEX": str(node.index)}
    if node.index == 1:
        return env | {"LB_WAIT": str(waits["lb"]), "LB_DEPENDS": _depends(plan, _role_names(plan, "lb")),
                      "CNI_MANIFEST": CNI_MANIFEST, "CNI_SHA256": cni_digest(plan),
                      "CNI_WAIT": str(plan.budget.budget.cni)}
    previous = plan.node(f"master{node.index - 1}")
    return env | {"PREVIOUS_MASTER_ADDRESS": str(previous.internal.address.ip),
                  "PREVIOUS_WAIT": str(waits["previous"]), "PREVIOUS_DEPENDS": _depends(plan, [previous.name])}


def cni_digest(plan: Plan) -> str:
    """SHA-256 of the adapted manifest master1 applies (checked on the node after the seed carried it)."""
    if plan.cni_manifest is None:
        raise LabError("the lab's CNI manifest has not been fetched yet",
                       "labctl.ops.cnisupply.cni_for_plan fetches, verifies and adapts it")
    return hashlib.sha256(plan.cni_manifest.encode()).hexdigest()


def _role_names(plan: Plan, role: str) -> list[str]:
    return [node.name for node in plan.nodes if node.role == role]


def _depends(plan: Plan, names: list[str]) -> str:
    """NAME@ADDRESS,…: the nodes a wait depends on, whose beacons say whether they failed."""
    return ",".join(f"{name}@{plan.node(name).internal.address.ip}" for name in names)


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
        f'        iifname "{LAN}" ip saddr {cidr} tcp dport {BEACON_PORT} accept',
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

