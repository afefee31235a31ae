"""The host's kubeconfig for the lab: the admin client certificate the host signed, and the API endpoint.

Pure apart from :func:`write_kubeconfig` and :func:`read_kubeconfig`. Nothing here edits /etc/hosts or
needs root: when the API name does not resolve on the host, the server is the API address, and
``tls-server-name`` keeps the certificate check on the name.
"""

import base64
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from labctl.errors import ConfigError
from labctl.lab.plan import API_PORT, Plan
from labctl.lab.state import DIR_MODE, write_private
from labctl.pki.secrets import LabSecrets

SECTIONS = ("clusters", "users", "contexts")
Resolve = Callable[[str, int], Any]  # socket.getaddrinfo-like: (host, port) -> [(family, type, proto, name, addr)]


def names(plan: Plan) -> tuple[str, str]:
    """(cluster and context name, user name): prefixed, so a merge never replaces the user's own entries."""
    return f"labctl-{plan.lab.name}", f"labctl-{plan.lab.name}-admin"


def choose_server(plan: Plan, resolve: Resolve) -> str:
    """``https://api.<domain>:6443`` when that name resolves on the host to the API address, else the address.

    A name that resolves elsewhere (a wildcard DNS, a stale hosts entry) counts as not resolving.
    """
    try:
        found = {str(info[4][0]) for info in resolve(plan.api_name, API_PORT)}
    except (OSError, UnicodeError):
        found = set()
    host = plan.api_name if str(plan.api_address) in found else str(plan.api_address)
    return f"https://{host}:{API_PORT}"


def _b64(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()


def kubeconfig_dict(plan: Plan, secrets: LabSecrets, server: str) -> dict[str, Any]:
    """A kubeconfig (as a dict) with one cluster, user and context, and that context current."""
    cluster_name, user_name = names(plan)
    cluster: dict[str, Any] = {"server": server, "certificate-authority-data": _b64(secrets.kubernetes_ca.cert_pem)}
    if urlsplit(server).hostname != plan.api_name:
        cluster["tls-server-name"] = plan.api_name  # the certificate is checked against the name, not the IP
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": cluster}],
        "users": [{"name": user_name, "user": {"client-certificate-data": _b64(secrets.admin.public),
                                               "client-key-data": _b64(secrets.admin.private_pem)}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user_name}}],
        "current-context": cluster_name,
        "preferences": {},
    }


def merge_kubeconfig(existing: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """``existing`` with ``new``'s clusters, users and contexts added, replacing same-named ones,
    every other entry and key kept, and ``new``'s current-context made current."""
    merged: dict[str, Any] = dict(new if existing is None else existing)
    merged.setdefault("apiVersion", "v1")
    merged.setdefault("kind", "Config")
    for section in SECTIONS:
        replaced = {entry["name"] for entry in new.get(section) or []}
        kept = [entry for entry in merged.get(section) or []
                if not (isinstance(entry, Mapping) and entry.get("name") in replaced)]
        merged[section] = kept + list(new.get(section) or [])
    merged["current-context"] = new["current-context"]
    return merged


def default_merge_target(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """Where kubectl looks first: the first path in ``$KUBECONFIG``, else ``~/.kube/config``."""
    environ = os.environ if environ is None else environ
    first = next((part for part in environ.get("KUBECONFIG", "").split(os.pathsep) if part), None)
    if first:
        return Path(first).expanduser()
    return (home or Path.home()) / ".kube" / "config"


def dump_kubeconfig(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)


def read_kubeconfig(path: Path) -> dict[str, Any] | None:
    """The kubeconfig at ``path``, None if there is none (or it is empty); refuses one that is not a kubeconfig."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"cannot read: {getattr(err, 'strerror', None) or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(str(path), "not valid YAML", "fix or move the file, or use --output") from err
    if data is None:
        return None
    if not isinstance(data, dict) or any(not isinstance(data.get(key) or [], list) for key in SECTIONS):
        raise ConfigError(str(path), "not a kubeconfig (clusters, users and contexts must be lists)")
    return data


def write_kubeconfig(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` to ``path`` (through a symlink to its target) with mode 0600; returns the file written."""
    target = Path(os.path.realpath(path))
    try:
        if not target.parent.exists():
            target.parent.mkdir(mode=DIR_MODE, parents=True)
        write_private(target, dump_kubeconfig(data).encode())
    except OSError as err:
        raise ConfigError(str(path), f"cannot write: {err.strerror or err}") from err
    return target
