"""kubeadm's configuration file of each Kubernetes node: YAML documents dumped from dicts (pure).

master1 gets InitConfiguration + ClusterConfiguration + KubeletConfiguration (kubeadm keeps the
last in the cluster for the nodes that join); every other master and every worker a JoinConfiguration.
The shared control-plane material (CAs, service-account keys) reaches the masters through their seeds,
so control-plane joins need no certificateKey; every join pins the CA with caCertHashes. The API
version follows the Kubernetes minor's row of the version table (v1beta4 from 1.31, v1beta3 before);
v1beta4 documents carry kubeadm's ``timeouts``, sized for the accelerator by the plan's budget table.
"""

from typing import Any

import yaml

from labctl.errors import ConfigError, LabError
from labctl.guest.containerd import CGROUP_DRIVER
from labctl.guest.etcd import external_etcd_section
from labctl.lab.plan import API_PORT, NodePlan, Plan
from labctl.lab.versions import load_versions, pair
from labctl.pki.secrets import TOKEN, LabSecrets

CRI_SOCKET = "unix:///var/run/containerd/containerd.sock"
BOOTSTRAP_TTL = "24h0m0s"  # joins happen during the first boot; the token is useless a day later
BOOTSTRAP_TTL_SECONDS = 24 * 3600
TOKEN_GROUPS = ["system:bootstrappers:kubeadm:default-node-token"]
TOKEN_USAGES = ["signing", "authentication"]
ETCD_DATA_DIR = "/var/lib/etcd"
PREFLIGHT_MINIMUMS = ["NumCPU", "Mem"]  # kubeadm's checks that enforce_minimums: false relaxes
V1BETA4 = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"  # the kubelet's config API for every minor of the table


def kubernetes_minor(version: str) -> tuple[int, int]:
    """(1, 35) from "1.35" or "1.35.4"; a ConfigError for a minor the version table does not have."""
    return pair(load_versions().minor(version).name)


def kubeadm_api_version(version: str) -> str:
    """The kubeadm config API for Kubernetes ``version`` (its row of the version table)."""
    return load_versions().minor(version).kubeadm_api


def render_kubeadm_config(plan: Plan, node: NodePlan, secrets: LabSecrets) -> str:
    """/etc/labctl/kubeadm.yaml of a master or worker, as multi-document YAML."""
    return yaml.safe_dump_all(
        kubeadm_documents(plan, node, secrets), sort_keys=False, default_flow_style=False, explicit_start=True
    )


def kubeadm_documents(plan: Plan, node: NodePlan, secrets: LabSecrets) -> list[dict[str, Any]]:
    """The configuration documents for ``node``: init on master1, join everywhere else."""
    if node.role not in ("master", "worker"):
        raise LabError(f"{node.name} is a {node.role}; only masters and workers run kubeadm")
    _check_join_secrets(secrets)
    if node.role == "master" and node.index == 1:
        return [_init_configuration(plan, node, secrets), cluster_configuration(plan), kubelet_configuration()]
    return [_join_configuration(plan, node, secrets)]


def kubelet_configuration() -> dict[str, Any]:
    """The kubelet's settings, which ``kubeadm init`` stores in the cluster for every node that joins: the
    cgroup driver containerd's runc uses. Said, not left to kubeadm's default: containerd 1.x cannot tell the
    kubelet its driver over CRI (RuntimeConfig came with containerd 2.0), so this is what the kubelet goes by."""
    return {"apiVersion": KUBELET_API, "kind": "KubeletConfiguration", "cgroupDriver": CGROUP_DRIVER}


def cluster_configuration(plan: Plan) -> dict[str, Any]:
    """Cluster-wide settings: the endpoint through the load balancer(s), subnets, SANs, etcd."""
    spec = plan.lab.kubernetes
    return {
        "apiVersion": kubeadm_api_version(spec.version),
        "kind": "ClusterConfiguration",
        "kubernetesVersion": _kubernetes_version(spec.version),
        "controlPlaneEndpoint": f"{plan.api_name}:{API_PORT}",
        "networking": {"podSubnet": str(spec.pod_cidr), "serviceSubnet": str(spec.service_cidr)},
        "apiServer": {"certSANs": [plan.api_name, str(plan.api_address)]},
        "etcd": etcd_configuration(plan),
    }


def etcd_configuration(plan: Plan) -> dict[str, Any]:
    """ClusterConfiguration.etcd per topology: a local member per master (stacked), or the lab's etcd nodes."""
    topology = plan.lab.kubernetes.etcd
    if topology == "stacked":
        return {"local": {"dataDir": ETCD_DATA_DIR}}
    if topology == "external":
        return external_etcd_section(plan)
    raise ConfigError("kubernetes.etcd", f"topology {topology!r} has no kubeadm configuration yet")


def _init_configuration(plan: Plan, node: NodePlan, secrets: LabSecrets) -> dict[str, Any]:
    return {
        "apiVersion": kubeadm_api_version(plan.lab.kubernetes.version),
        "kind": "InitConfiguration",
        "bootstrapTokens": [
            {
                "token": secrets.bootstrap_token,
                "description": f"labctl lab {plan.lab.name}: node joins during first boot",
                "ttl": BOOTSTRAP_TTL,
                "usages": list(TOKEN_USAGES),
                "groups": list(TOKEN_GROUPS),
            }
        ],
        "nodeRegistration": _node_registration(plan, node),
        "localAPIEndpoint": _local_endpoint(node),
        **_timeouts(plan),
    }


def _timeouts(plan: Plan) -> dict[str, Any]:
    """v1beta4's ``timeouts``, from the plan's budget table (larger under TCG than with KVM)."""
    if kubeadm_api_version(plan.lab.kubernetes.version) != V1BETA4:
        return {}
    return {"timeouts": plan.budget.budget.kubeadm.v1beta4()}


def _join_configuration(plan: Plan, node: NodePlan, secrets: LabSecrets) -> dict[str, Any]:
    config: dict[str, Any] = {
        "apiVersion": kubeadm_api_version(plan.lab.kubernetes.version),
        "kind": "JoinConfiguration",
        "nodeRegistration": _node_registration(plan, node),
        "discovery": {
            "bootstrapToken": {
                "token": secrets.bootstrap_token,
                "apiServerEndpoint": f"{plan.api_name}:{API_PORT}",
                "caCertHashes": [secrets.ca_cert_hash],
            }
        },
    }
    if node.role == "master":
        # No certificateKey: the CAs and service-account keys came with the seed.
        config["controlPlane"] = {"localAPIEndpoint": _local_endpoint(node)}
    return config | _timeouts(plan)


def _node_registration(plan: Plan, node: NodePlan) -> dict[str, Any]:
    node_ip = str(node.internal.address.ip)
    v1beta4 = kubeadm_api_version(plan.lab.kubernetes.version) == V1BETA4
    registration: dict[str, Any] = {
        "name": node.name,
        "criSocket": CRI_SOCKET,
        # v1beta4 turned the extra-args maps into lists of name/value pairs.
        "kubeletExtraArgs": [{"name": "node-ip", "value": node_ip}] if v1beta4 else {"node-ip": node_ip},
    }
    if node.role == "master" and not plan.lab.kubernetes.enforce_minimums:
        registration["ignorePreflightErrors"] = list(PREFLIGHT_MINIMUMS)
    return registration


def _local_endpoint(node: NodePlan) -> dict[str, Any]:
    return {"advertiseAddress": str(node.internal.address.ip), "bindPort": API_PORT}


def _kubernetes_version(version: str) -> str:
    # "1.31" names a stream, not a release: kubeadm resolves stable-1.31 to its newest patch, or to its
    # own version when offline. "1.31.4" is exact.
    return f"v{version}" if version.count(".") == 2 else f"stable-{version}"


def _check_join_secrets(secrets: LabSecrets) -> None:
    if not TOKEN.fullmatch(secrets.bootstrap_token):
        raise LabError("the lab's bootstrap token is not of the form [a-z0-9]{6}.[a-z0-9]{16}")
    algo, _, digest = secrets.ca_cert_hash.partition(":")
    if algo != "sha256" or len(digest) != 64:
        raise LabError("the lab's CA hash is not sha256:<64 hex digits>")
