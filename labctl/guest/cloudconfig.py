"""What each node does on first boot, as cloud-config keys merged into its user-data (pure).

Every node gets its SSH host key (pinned by the host), the static bootstrap scripts, its env file
and its role's configuration files through ``write_files``, and ``runcmd`` enables and starts
labctl-bootstrap.service, which runs ``/usr/local/lib/labctl/bootstrap`` at every boot until the node
is ready (resuming at its first unfinished step). Secrets go only to the nodes that use them, 0600 root.
Apt sources come from the node's bootstrap too (with a lab mirror, labctl's own deb822 file, the
image's moved aside): cloud-init's apt module is not used, because Debian's images tell it to keep
their sources (``preserve_sources_list``), whatever the seed asks.

Layout on a node::

    /usr/local/lib/labctl/bootstrap, retry, lib.sh, <role scripts>  static scripts (cloud-init/scripts)
    /etc/systemd/system/labctl-{bootstrap,beacon}.service         the bootstrap unit, the phase beacon
    /etc/labctl/lab.env                                           the scripts' parameters
    /etc/labctl/{nftables,dnsmasq}.conf                           gateway, installed by gateway.sh
    /etc/labctl/{haproxy.cfg,keepalived.conf,kubernetes-ca.crt}   load balancers
    /etc/labctl/kubeadm.yaml, containerd-{1,2}.toml               masters and workers
    /etc/labctl/pki/{ca,front-proxy-ca,etcd/ca}.{crt,key}, sa.{key,pub}   masters (into /etc/kubernetes/pki)
    /etc/labctl/pki/apiserver-etcd-client.{crt,key}               masters of an external etcd (no etcd/ca.key)
    /etc/labctl/{etcd.yaml,etcd-service.conf,etcd-pki/}           external etcd members (labctl.guest.etcd)
    /etc/labctl/cni.yaml                                          master1: the adapted CNI manifest
    /var/lib/labctl/phase, done/<step>, error                     the last phase, completed steps, the failure
"""

import base64
import gzip
from collections.abc import Callable
from typing import Any

from labctl.errors import StateError
from labctl.guest.containerd import render_containerd_configs
from labctl.guest.etcd import (
    ETCD_CONFIG,
    ETCD_DROPIN,
    SEED_PKI,
    is_external,
    master_client_files,
    member_files,
    render_etcd_config,
)
from labctl.guest.roles import (
    CLUSTER_CA_COPY,
    CNI_MANIFEST,
    ENV_FILE,
    ETC_DIR,
    K8S_APT_KEY,
    KUBEADM_CONFIG,
    cni_digest,
    render_dnsmasq_conf,
    render_haproxy_cfg,
    render_keepalived_conf,
    render_kubeadm_config,
    render_lab_env,
    render_nftables,
)
from labctl.lab.plan import NodePlan, Plan
from labctl.pki.secrets import LabSecrets
from labctl.resources import read_text

SCRIPT_DIR = "/usr/local/lib/labctl"
BOOTSTRAP = f"{SCRIPT_DIR}/bootstrap"
REFRESH = f"{SCRIPT_DIR}/refresh"  # run over ssh by `up` when the lab grows (labctl.ops.grow)
REFRESHED_BY = ("gateway", "lb", "master")  # the roles that learn about added nodes
RETRY = f"{SCRIPT_DIR}/retry"  # `labctl up --retry-failed` runs it on every node
BOOTSTRAP_UNIT = "labctl-bootstrap.service"
ENTRY_SCRIPTS = ("bootstrap", "retry")
ROLE_SCRIPTS = {
    "gateway": ("gateway.sh",),
    "lb": ("lb.sh",),
    "etcd": ("etcd.sh",),
    "master": ("k8s-node.sh", "etcd.sh", "master.sh"),
    "worker": ("k8s-node.sh", "worker.sh"),
}
# cloud-init/files/<name> -> where it goes on the node
STATIC_FILES = {
    "gateway": (("gateway-sysctl.conf", "/etc/sysctl.d/90-labctl-gateway.conf"),),
    "lb": (),
    "etcd": (),
    "master": (
        ("k8s-modules.conf", "/etc/modules-load.d/labctl-k8s.conf"),
        ("k8s-sysctl.conf", "/etc/sysctl.d/90-labctl-k8s.conf"),
    ),
}
STATIC_FILES["worker"] = STATIC_FILES["master"]
PUBLIC, PRIVATE = "0644", "0600"
OWNER = "root:root"

# The phases a node reports, in order, after `start`; `ready` is the last.
K8S_PREPARE = ("network", "kernel", "packages", "containerd")


def role_config(plan: Plan, node: NodePlan, secrets: LabSecrets) -> dict[str, Any]:
    """The cloud-config keys that make ``node`` what its role says (write_files, runcmd, ssh_keys, apt)."""
    files = [
        *_script_files(node.role),
        *_static_files(node.role),
        write_file(ENV_FILE, render_lab_env(plan, node), PUBLIC),
        *ROLE_FILES[node.role](plan, node, secrets),
    ]
    return {
        "ssh_deletekeys": True,
        "ssh_keys": _ssh_host_key(node, secrets),
        "write_files": files,
        # --no-block: runcmd (cloud-init's final stage) does not wait for the bootstrap.
        "runcmd": [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "--no-block", BOOTSTRAP_UNIT]],
    }


def role_phases(plan: Plan, node: NodePlan) -> tuple[str, ...]:
    """Every phase ``node`` reports, in order (a failure reports ``failed <step>`` instead)."""
    if node.role == "gateway":
        steps: tuple[str, ...] = ("packages", "forwarding", "firewall", "dns")
    elif node.role == "lb":
        steps = ("network", "packages", "haproxy") + (("keepalived",) if plan.lab.role("lb").count > 1 else ())
    elif node.role == "etcd":
        steps = ("network", "packages", "etcd", "health")
    elif node.role == "master" and node.index == 1:
        wait_etcd = ("wait-etcd",) if is_external(plan) else ()
        steps = (*K8S_PREPARE, "etcd-client", *wait_etcd, "wait-lb", "kubeadm-init", "cni", "kubeconfig")
    elif node.role == "master":
        steps = (*K8S_PREPARE, "etcd-client", "wait-previous", "kubeadm-join", "kubeconfig")
    else:
        steps = (*K8S_PREPARE, "wait-api", "kubeadm-join")
    return ("start", *steps, "ready")


def write_file(path: str, content: str, permissions: str) -> dict[str, Any]:
    return {"path": path, "content": content, "owner": OWNER, "permissions": permissions}


def write_compressed(path: str, content: str, permissions: str) -> dict[str, Any]:
    """A file cloud-init unpacks (gzip, base64): large text such as a CNI manifest stays small in the seed."""
    packed = base64.b64encode(gzip.compress(content.encode(), mtime=0)).decode()
    return {**write_file(path, packed, permissions), "encoding": "gz+b64"}


def _script_files(role: str) -> list[dict[str, Any]]:
    files = [write_file(f"{SCRIPT_DIR}/{name}", read_text("cloud-init", f"scripts/{name}"), "0755")
             for name in ENTRY_SCRIPTS]
    if role in REFRESHED_BY:
        files.append(write_file(REFRESH, read_text("cloud-init", "scripts/refresh"), "0755"))
    for name in ("lib.sh", *ROLE_SCRIPTS[role]):
        files.append(write_file(f"{SCRIPT_DIR}/{name}", read_text("cloud-init", f"scripts/{name}"), PUBLIC))
    return files


def _static_files(role: str) -> list[dict[str, Any]]:
    every_node = tuple((unit, f"/etc/systemd/system/{unit}")
                       for unit in (BOOTSTRAP_UNIT, "labctl-beacon.service"))
    return [write_file(path, read_text("cloud-init", f"files/{name}"), PUBLIC)
            for name, path in (*every_node, *STATIC_FILES[role])]


def _ssh_host_key(node: NodePlan, secrets: LabSecrets) -> dict[str, str]:
    key = secrets.host_keys.get(node.name)
    if key is None:
        raise StateError(f"no SSH host key for node {node.name}", "ensure_secrets makes one per planned node")
    return {"ed25519_private": key.private_pem, "ed25519_public": key.public}


def _gateway_files(plan: Plan, node: NodePlan, secrets: LabSecrets) -> list[dict[str, Any]]:
    return [
        write_file(f"{ETC_DIR}/nftables.conf", render_nftables(plan), PUBLIC),
        write_file(f"{ETC_DIR}/dnsmasq.conf", render_dnsmasq_conf(plan), PUBLIC),
    ]


def _lb_files(plan: Plan, node: NodePlan, secrets: LabSecrets) -> list[dict[str, Any]]:
    files = [
        write_file(CLUSTER_CA_COPY, secrets.kubernetes_ca.cert_pem, PUBLIC),
        write_file(f"{ETC_DIR}/haproxy.cfg", render_haproxy_cfg(plan, node, secrets), PRIVATE),
    ]
    if plan.lab.role("lb").count > 1:
        files.append(write_file(f"{ETC_DIR}/keepalived.conf", render_keepalived_conf(plan, node, secrets), PRIVATE))
    return files


def _k8s_files(plan: Plan, node: NodePlan, secrets: LabSecrets) -> list[dict[str, Any]]:
    """What masters and workers share: kubeadm's configuration, containerd's for either major version,
    and the package repository's key when lab.yaml gives it as a file."""
    files = [write_file(KUBEADM_CONFIG, render_kubeadm_config(plan, node, secrets), PRIVATE)]
    files += [write_file(path, text, PUBLIC) for path, text in render_containerd_configs(plan).items()]
    if plan.lab.kubernetes.apt_key:
        files.append(write_file(K8S_APT_KEY, plan.lab.kubernetes.apt_key, PUBLIC))
    return files


def _master_files(plan: Plan, node: NodePlan, secrets: LabSecrets) -> list[dict[str, Any]]:
    """kubeadm's shared control-plane material ("manual certificate distribution"), kept in /etc/labctl/pki
    (the bootstrap copies it into /etc/kubernetes/pki before every kubeadm run: `kubeadm reset` removes
    it there), its config, and on master1 the CNI manifest."""
    authorities = {"ca": secrets.kubernetes_ca, "front-proxy-ca": secrets.front_proxy_ca, "etcd/ca": secrets.etcd_ca}
    files = _k8s_files(plan, node, secrets)
    for stem, authority in authorities.items():
        files.append(write_file(f"{SEED_PKI}/{stem}.crt", authority.cert_pem, PUBLIC))
        if stem != "etcd/ca" or not is_external(plan):
            files.append(write_file(f"{SEED_PKI}/{stem}.key", authority.key_pem, PRIVATE))
    files.append(write_file(f"{SEED_PKI}/sa.key", secrets.service_account.private_pem, PRIVATE))
    files.append(write_file(f"{SEED_PKI}/sa.pub", secrets.service_account.public, PUBLIC))
    if is_external(plan):
        # kubeadm's external etcd: the CA certificate and the apiserver's client certificate, never the etcd
        # CA key (a master could otherwise make itself a member).
        files += _secret_files(master_client_files(secrets.etcd))
    if node.index == 1:
        cni_digest(plan)  # refuses a plan whose manifest was not fetched
        files.append(write_compressed(CNI_MANIFEST, plan.cni_manifest or "", PUBLIC))
    return files


def _etcd_files(plan: Plan, node: NodePlan, secrets: LabSecrets) -> list[dict[str, Any]]:
    """An external member's configuration, its unit's drop-in and its certificates (staged for etcd.sh)."""
    return [
        write_file(ETCD_CONFIG, render_etcd_config(plan, node), PUBLIC),
        write_file(ETCD_DROPIN, read_text("cloud-init", "files/etcd-service.conf"), PUBLIC),
        *_secret_files(member_files(secrets.etcd, secrets.etcd_ca.cert_pem, node)),
    ]


def _secret_files(files: dict[str, tuple[str, bool]]) -> list[dict[str, Any]]:
    return [write_file(path, content, PRIVATE if secret else PUBLIC) for path, (content, secret) in files.items()]


def _worker_files(plan: Plan, node: NodePlan, secrets: LabSecrets) -> list[dict[str, Any]]:
    # The CA stays out of /etc/kubernetes/pki: kubeadm join refuses a worker whose ca.crt exists.
    return [write_file(CLUSTER_CA_COPY, secrets.kubernetes_ca.cert_pem, PUBLIC), *_k8s_files(plan, node, secrets)]


ROLE_FILES: dict[str, Callable[[Plan, NodePlan, LabSecrets], list[dict[str, Any]]]] = {
    "gateway": _gateway_files,
    "lb": _lb_files,
    "etcd": _etcd_files,
    "master": _master_files,
    "worker": _worker_files,
}
