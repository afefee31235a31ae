"""The CNI manifest master1 applies: which one (network/cni.yaml, by the Kubernetes minor's row of the
version table, or the lab's own), and the lab's pod network set in it as data (pure).

The manifest is parsed as YAML documents; the pod network lives in the JSON document that a
ConfigMap holds under a key (flannel: ``kube-flannel-cfg``, ``net-conf.json``, ``Network``), which is
parsed as JSON, set, and written back. A manifest that needs no change is carried byte for byte (what
master1 applies is then exactly the pinned file); one that does is dumped again from the parsed
documents. A manifest without the expected structure is a one-line error, before any VM exists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

import yaml

from labctl.errors import ConfigError
from labctl.guest.yamltext import dump_documents
from labctl.lab.model import ManifestSource
from labctl.lab.plan import Plan
from labctl.lab.versions import load_versions
from labctl.resources import read_text

FIELD = "kubernetes.cni_manifest"


@dataclass(frozen=True)
class PodNetwork:
    """Where a manifest keeps the pod network: ``data[key]`` of ConfigMap ``configmap``, a JSON
    document whose ``field`` is the CIDR."""

    configmap: str
    key: str
    field: str


@dataclass(frozen=True)
class CniManifest:
    name: str  # flannel or calico
    release: str  # v0.28.4
    source: ManifestSource
    pod_network: PodNetwork | None  # None: the CNI reads kubeadm's podSubnet itself

    @property
    def cache_name(self) -> str:
        return f"cni-{self.name}-{self.release}"


def cni_manifest(plan: Plan) -> CniManifest:
    """The lab's CNI manifest: the release its Kubernetes minor names, or the lab's own source for it."""
    spec = plan.lab.kubernetes
    release = load_versions().minor(spec.version).cni[spec.cni]
    entry = yaml.safe_load(read_text("network", "cni.yaml"))[spec.cni][release]
    where = entry.get("pod_network")
    pod_network = PodNetwork(where["configmap"], where["key"], where["field"]) if where else None
    source = spec.cni_manifest or ManifestSource(entry["sha256"], url=entry["url"])
    return CniManifest(spec.cni, release, source, pod_network)


def adapt_manifest(text: str, cni: CniManifest, pod_cidr: IPv4Network) -> str:
    """``text`` with the pod network set to ``pod_cidr``; a ConfigError naming the manifest when its
    structure is not the expected one."""
    where = cni.source.where
    documents = _documents(text, where)
    if cni.pod_network is None:
        return text
    network = cni.pod_network
    config = _configmap(documents, network, where)
    settings = _settings(config, network, where)
    current = settings.get(network.field)
    if not isinstance(current, str):
        raise ConfigError(FIELD, f"{where}: {network.key} of ConfigMap {network.configmap} has no "
                                 f"{network.field!r} string")
    if current == str(pod_cidr):
        return text
    settings[network.field] = str(pod_cidr)
    config["data"][network.key] = json.dumps(settings, indent=2) + "\n"
    return dump_documents(documents)


def _documents(text: str, where: str) -> list[dict[str, Any]]:
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        raise ConfigError(FIELD, f"{where}: not YAML: {' '.join(str(err).split())}") from err
    if not documents:
        raise ConfigError(FIELD, f"{where}: no documents")
    for index, doc in enumerate(documents):
        if not isinstance(doc, Mapping) or not doc.get("kind") or not doc.get("apiVersion"):
            raise ConfigError(FIELD, f"{where}: document {index + 1} is not a Kubernetes object "
                                     "(apiVersion and kind)")
    return documents


def _configmap(documents: list[dict[str, Any]], network: PodNetwork, where: str) -> dict[str, Any]:
    found = [doc for doc in documents if doc["kind"] == "ConfigMap"
             and (doc.get("metadata") or {}).get("name") == network.configmap]
    if len(found) != 1:
        names = sorted(str((doc.get("metadata") or {}).get("name")) for doc in documents if doc["kind"] == "ConfigMap")
        raise ConfigError(FIELD, f"{where}: expected one ConfigMap {network.configmap}, found "
                                 f"{len(found)} (ConfigMaps: {', '.join(names) or 'none'})")
    config = found[0]
    if not isinstance(config.get("data"), Mapping) or not isinstance(config["data"].get(network.key), str):
        raise ConfigError(FIELD, f"{where}: ConfigMap {network.configmap} has no data key {network.key!r}")
    return config


def _settings(config: dict[str, Any], network: PodNetwork, where: str) -> dict[str, Any]:
    try:
        settings = json.loads(config["data"][network.key])
    except ValueError as err:
        raise ConfigError(FIELD, f"{where}: {network.key} of ConfigMap {network.configmap} is not JSON: "
                                 f"{err}") from err
    if not isinstance(settings, dict):
        raise ConfigError(FIELD, f"{where}: {network.key} of ConfigMap {network.configmap} is not a JSON object")
    return settings
