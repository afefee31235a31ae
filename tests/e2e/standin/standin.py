#!/usr/bin/python3
"""Recording stand-ins for kubeadm, kubelet and kubectl: the e2e test image only, never shipped.

Installed as /usr/lib/labctl-standin/standin.py with /usr/bin/kubeadm, /usr/bin/kubelet and
/usr/bin/kubectl symlinked to it; the name it is called by says which tool it plays. Every call
appends one JSON line to /var/lib/labctl-standin/calls.jsonl: the tool, its argv, the wall time,
the --config file's full text, the sha256 of /etc/kubernetes/pki/ca.crt and of every file under
/etc/kubernetes/pki, and for ``kubectl -f FILE`` the sha256 and text of FILE.

``kubeadm init`` with ``etcd.external`` first asks every endpoint for its /version with the configured CA and
client certificate, as kubeadm's preflight does, records the answers and fails if one does not answer.

``kubeadm reset`` records the call and removes what kubeadm's reset removes: the kubeconfigs and
static pod manifests under /etc/kubernetes, everything under /etc/kubernetes/pki, and the fake API
server (stopped, disabled). Failures on purpose, for the end-to-end drills, are files a test puts on
the node: /var/lib/labctl-standin/fail-init-once makes the next ``init`` fail after writing
kubelet.conf (and removes the file); /var/lib/labctl-standin/fail-join makes every ``join`` fail
after writing kubelet.conf, for as long as it exists. Each such call is recorded with exit 1.

``kubeadm init`` and ``kubeadm join`` with a controlPlane section make a serving certificate for
the node's advertise address and the API name, signed by /etc/kubernetes/pki/ca.{crt,key} with
openssl, enable and start labctl-fake-apiserver.service (:6443, answers /readyz) and wait until it listens,
then write /etc/kubernetes/admin.conf. Every join first probes its discovery endpoint's /readyz
(as kubeadm's discovery would fail without a live endpoint) and records who answered.

Runs on the guest's python3 alone (plus python3-yaml, which cloud-init needs). For tests on the
host, LABCTL_STANDIN_ROOT puts every path under a directory, LABCTL_STANDIN_SYSTEMCTL replaces
systemctl and LABCTL_STANDIN_WAIT=0 skips waiting for the fake apiserver.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

VERSION_FILE = "/usr/lib/labctl-standin/VERSION"  # the packages' version, e.g. 1.35.0-1.1+labctl.standin
UNIT = "labctl-fake-apiserver.service"
PORT = 6443
STATE_DIR = "/var/lib/labctl-standin"
PKI_DIR = "/etc/kubernetes/pki"
CONFIG_KINDS = {
    "init": {"InitConfiguration", "ClusterConfiguration"},
    "join": {"JoinConfiguration"},
}
FAIL_INIT_ONCE = STATE_DIR + "/fail-init-once"
FAIL_JOIN = STATE_DIR + "/fail-join"
RESET_FILES = ("/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/super-admin.conf",
               "/etc/kubernetes/controller-manager.conf", "/etc/kubernetes/scheduler.conf")
PROBE_ATTEMPTS = 30
PROBE_INTERVAL = 2.0


class StandinError(Exception):
    """What a real kubeadm would have refused; printed, exit status 1."""


def path(name: str) -> str:
    """``name`` (absolute, as on the guest) under LABCTL_STANDIN_ROOT, if set."""
    return os.path.join(os.environ.get("LABCTL_STANDIN_ROOT", "/"), name.lstrip("/"))


def version() -> str:
    """v1.35.0 from the installed packages' version (the stand-ins play the Kubernetes they are packaged as)."""
    text = read_text(VERSION_FILE) or "1.35.0"
    return "v" + text.strip().split("-")[0]


def sha256_file(name: str) -> str | None:
    try:
        with open(path(name), "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def read_text(name: str) -> str | None:
    try:
        with open(path(name), encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def pki_digests() -> dict[str, str]:
    """sha256 of every file under /etc/kubernetes/pki, by path relative to it."""
    found = {}
    top = path(PKI_DIR)
    for root, _dirs, files in os.walk(top):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                found[os.path.relpath(full, top)] = hashlib.sha256(handle.read()).hexdigest()
    return dict(sorted(found.items()))


def option(argv: list[str], *names: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` (or a short ``-f VALUE``) in ``argv``."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def record(entry: dict) -> None:
    """Append ``entry`` (plus time and pid) to calls.jsonl, one line, 0600."""
    os.makedirs(path(STATE_DIR), mode=0o700, exist_ok=True)
    entry = {"pid": os.getpid(), "hostname": socket.gethostname(), **entry}
    fd = os.open(path(STATE_DIR + "/calls.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def base_entry(tool: str, argv: list[str]) -> dict:
    config = option(argv, "--config")
    return {
        "tool": tool,
        "time": time.time(),  # when the call started
        "argv": argv,
        "config_file": config,
        "config": read_text(config) if config else None,
        "ca_sha256": sha256_file(PKI_DIR + "/ca.crt"),
        "pki": pki_digests(),
    }


# --- kubeadm --------------------------------------------------------------------------------


def load_config(text: str | None, command: str) -> dict[str, dict]:
    """The kubeadm config documents by kind; a StandinError where kubeadm would refuse it."""
    import yaml  # python3-yaml: cloud-init's own dependency, so present in every image

    if text is None:
        raise StandinError(f"kubeadm {command}: --config FILE is required here and was not readable")
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        raise StandinError(f"kubeadm {command}: config is not YAML: {err}") from err
    by_kind = {}
    for doc in documents:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise StandinError(f"kubeadm {command}: every config document needs apiVersion and kind")
        by_kind[doc["kind"]] = doc
    missing = CONFIG_KINDS[command] - set(by_kind)
    if missing:
        raise StandinError(f"kubeadm {command}: config lacks {', '.join(sorted(missing))}")
    return by_kind


def serving_identity(command: str, config: dict[str, dict]) -> tuple[str, list[str]] | None:
    """(advertise address, SANs) when this call brings up an API server; None for a worker join."""
    if command == "init":
        init, cluster = config["InitConfiguration"], config["ClusterConfiguration"]
        address = (init.get("localAPIEndpoint") or {}).get("advertiseAddress")
        endpoint = cluster.get("controlPlaneEndpoint", "")
        extra = (cluster.get("apiServer") or {}).get("certSANs") or []
    else:
        join = config["JoinConfiguration"]
        if "controlPlane" not in join:
            return None
        address = ((join["controlPlane"] or {}).get("localAPIEndpoint") or {}).get("advertiseAddress")
        endpoint = ((join.get("discovery") or {}).get("bootstrapToken") or {}).get("apiServerEndpoint", "")
        extra = []
    if not address:
        raise StandinError(f"kubeadm {command}: no advertiseAddress in the config")
    names = [address, endpoint.rsplit(":", 1)[0] if endpoint else "", *extra, socket.gethostname(),
             "kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost", "127.0.0.1"]
    return address, list(dict.fromkeys(name for name in names if name))


def is_ip(name: str) -> bool:
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return name.count(".") == 3


def make_serving_cert(sans: list[str]) -> None:
    """apiserver.{crt,key} for ``sans``, signed by the distributed ca.{crt,key}, with openssl."""
    pki = path(PKI_DIR)
    for name in ("ca.crt", "ca.key"):
        if not os.path.isfile(os.path.join(pki, name)):
            raise StandinError(f"{PKI_DIR}/{name} is missing: the CA must be distributed before kubeadm runs")
    alt = ",".join(("IP:" if is_ip(name) else "DNS:") + name for name in sans)
    with tempfile.TemporaryDirectory() as work:
        csr, ext = os.path.join(work, "apiserver.csr"), os.path.join(work, "ext.cnf")
        with open(ext, "w", encoding="ascii") as handle:
            handle.write(f"subjectAltName={alt}\nextendedKeyUsage=serverAuth\n"
                         "keyUsage=critical,digitalSignature,keyEncipherment\n")
        key, crt = os.path.join(pki, "apiserver.key"), os.path.join(pki, "apiserver.crt")
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-subj", "/CN=kube-apiserver", "-out", csr])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(pki, "ca.crt"),
             "-CAkey", os.path.join(pki, "ca.key"), "-set_serial", str(int(time.time() * 1000)),
             "-days", "365", "-sha256", "-extfile", ext, "-out", crt])
        os.chmod(key, 0o600)


def run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise StandinError(f"{argv[0]} {argv[1]} failed: {result.stderr.strip()[-400:]}")


def start_apiserver() -> None:
    """Start the fake API server unit and wait (bounded) until :6443 accepts connections."""
    systemctl = os.environ.get("LABCTL_STANDIN_SYSTEMCTL", "systemctl")
    run([systemctl, "enable", UNIT])  # back at every boot, like the static pods kubelet restarts
    run([systemctl, "restart", UNIT])
    if os.environ.get("LABCTL_STANDIN_WAIT") == "0":
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise StandinError(f"the fake API server did not listen on :{PORT} within 60s")


def write_kubeconfig(name: str, server: str) -> None:
    """A kubeconfig naming ``server`` and the cluster CA (the stand-ins never authenticate)."""
    import base64

    cluster = {"server": server}
    ca_file = path(PKI_DIR + "/ca.crt")
    if os.path.isfile(ca_file):  # not on a worker whose join failed before discovery wrote it
        with open(ca_file, "rb") as handle:
            cluster["certificate-authority-data"] = base64.b64encode(handle.read()).decode()
    text = json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": cluster}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
        "users": [{"name": "standin", "user": {}}],
    }, indent=2)
    target = path(name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


def get(url: str, context: ssl.SSLContext) -> tuple[bytes, str | None]:
    """GET ``url`` (bounded retries, as kubeadm's discovery retries): (body, X-Standin-Node)."""
    last = ""
    for _attempt in range(PROBE_ATTEMPTS):
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as resp:  # noqa: S310 - https only
                return resp.read(), resp.headers.get("X-Standin-Node")
        except OSError as err:
            last = str(err)
        time.sleep(PROBE_INTERVAL)
    raise StandinError(f"kubeadm join: no answer from {url} after {PROBE_ATTEMPTS} tries: {last}")


def spki_sha256(cert_pem: bytes) -> str:
    """kubeadm's CA pin: ``sha256:`` + the SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    def openssl(*args: str, data: bytes) -> bytes:
        done = subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise StandinError(f"openssl {args[0]}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    public = openssl("x509", "-pubkey", "-noout", data=cert_pem)
    return "sha256:" + hashlib.sha256(openssl("pkey", "-pubin", "-outform", "DER", data=public)).hexdigest()


def discover(endpoint: str, pins: list[str]) -> dict:
    """kubeadm's token discovery, reduced: fetch the cluster CA from cluster-info without trusting the
    endpoint, accept it only if it matches a pinned hash, then GET /readyz verified with that CA."""
    import base64

    import yaml

    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    body, _ = get(f"https://{endpoint}{CLUSTER_INFO}", insecure)
    kubeconfig = yaml.safe_load(json.loads(body)["data"]["kubeconfig"])
    ca_pem = base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"])
    found = spki_sha256(ca_pem)
    if found not in pins:
        raise StandinError(f"cluster CA found in cluster-info has hash {found}, which matches none of {pins}")
    local = path(PKI_DIR + "/ca.crt")
    if os.path.isfile(local):
        with open(local, "rb") as handle:
            if handle.read() != ca_pem:
                raise StandinError(f"{PKI_DIR}/ca.crt differs from the cluster's CA")
    else:  # a worker: kubeadm writes the discovered CA
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as handle:
            handle.write(ca_pem)
    verified = ssl.create_default_context(cafile=local)
    readyz, answered_by = get(f"https://{endpoint}/readyz", verified)
    return {"endpoint": endpoint, "ca_hash": found, "status": 200, "body": readyz.decode(errors="replace"),
            "answered_by": answered_by, "time": time.time()}


def api_endpoint(command: str, config: dict[str, dict]) -> str:
    """host:port of the cluster's API as the config names it (controlPlaneEndpoint or discovery)."""
    if command == "init":
        endpoint = config["ClusterConfiguration"].get("controlPlaneEndpoint")
    else:
        endpoint = ((config["JoinConfiguration"].get("discovery") or {}).get("bootstrapToken") or {}).get(
            "apiServerEndpoint")
    if not endpoint:
        raise StandinError(f"kubeadm {command}: the config names no API endpoint")
    return str(endpoint) if ":" in str(endpoint) else f"{endpoint}:{PORT}"


def external_etcd_versions(external: dict) -> dict[str, str]:
    """kubeadm's ExternalEtcdVersion preflight: every endpoint's /version, over TLS with the configured files."""
    context = ssl.create_default_context(cafile=path(external["caFile"]))
    context.load_cert_chain(path(external["certFile"]), path(external["keyFile"]))
    versions = {}
    for endpoint in external.get("endpoints") or []:
        try:
            with urllib.request.urlopen(f"{endpoint}/version", timeout=10, context=context) as resp:  # noqa: S310
                versions[endpoint] = json.loads(resp.read())["etcdserver"]
        except (OSError, ValueError, KeyError) as err:
            raise StandinError(f"[preflight] ExternalEtcdVersion: {endpoint}: {err}") from err
    return versions


def bring_up(command: str, config: dict[str, dict], entry: dict) -> None:
    """What init / join do on the node, recorded into ``entry``."""
    endpoint = api_endpoint(command, config)
    external = (config.get("ClusterConfiguration") or {}).get("etcd", {}).get("external")
    if command == "init" and external:
        entry["etcd_external_versions"] = external_etcd_versions(external)
    if command == "join":
        bootstrap = config["JoinConfiguration"]["discovery"]["bootstrapToken"]
        entry["probe"] = discover(endpoint, list(bootstrap.get("caCertHashes") or []))
    identity = serving_identity(command, config)
    if identity is not None:
        entry["serving_address"], entry["serving_sans"] = identity
        make_serving_cert(identity[1])
        start_apiserver()
        write_kubeconfig("/etc/kubernetes/admin.conf", f"https://{endpoint}")
    write_kubeconfig("/etc/kubernetes/kubelet.conf", f"https://{endpoint}")


TOKENS = f"{STATE_DIR}/tokens"  # the bootstrap tokens this "cluster" knows: init's, then `token create`'s


def remember_token(token: str) -> None:
    os.makedirs(path(STATE_DIR), exist_ok=True)
    with open(path(TOKENS), "a", encoding="utf-8") as out:
        out.write(token + "\n")


def known_tokens() -> list[str]:
    return (read_text(TOKENS) or "").split()


def token(argv: list[str], entry: dict) -> int:
    """``kubeadm token create TOKEN …`` remembers TOKEN; ``kubeadm token list`` prints them as kubeadm does."""
    words = argv[argv.index("token") + 1:]
    action = words[0] if words else ""
    if action == "create" and len(words) > 1 and not words[1].startswith("-"):
        entry.update(token=words[1], exit=0)
        record(entry)
        remember_token(words[1])
        print(words[1])
        return 0
    if action == "list":
        record({**entry, "exit": 0})
        print("TOKEN                     TTL         EXPIRES   USAGES                   DESCRIPTION   EXTRA GROUPS")
        for known in known_tokens():
            print(f"{known}   23h   -   authentication,signing   labctl-standin   "
                  "system:bootstrappers:kubeadm:default-node-token")
        return 0
    record({**entry, "exit": 1})
    print(f"standin: kubeadm token {action}: not played", file=sys.stderr)
    return 1


def reset(entry: dict) -> int:
    """What ``kubeadm reset -f`` removes, recorded; the node is then as before init/join."""
    removed = []
    for name in RESET_FILES:
        if os.path.exists(path(name)):
            os.remove(path(name))
            removed.append(name)
    for directory in ("/etc/kubernetes/manifests", PKI_DIR):
        top = path(directory)
        for root, _dirs, files in os.walk(top, topdown=False):
            for name in files:
                os.remove(os.path.join(root, name))
                removed.append(os.path.join(directory, os.path.relpath(os.path.join(root, name), top)))
    systemctl = os.environ.get("LABCTL_STANDIN_SYSTEMCTL", "systemctl")
    for action in ("stop", "disable"):
        subprocess.run([systemctl, action, UNIT], capture_output=True, timeout=60, check=False)
    entry.update(exit=0, removed=sorted(removed), finished=time.time())
    record(entry)
    print("[reset] The reset process does not clean CNI configuration, iptables rules or kubeconfig files")
    return 0


def sabotaged(command: str) -> str | None:
    """Why this call fails on purpose (a drill's file on the node), or None."""
    if command == "init" and os.path.exists(path(FAIL_INIT_ONCE)):
        os.remove(path(FAIL_INIT_ONCE))
        return f"{FAIL_INIT_ONCE} asked this init to fail once"
    if command == "join" and os.path.exists(path(FAIL_JOIN)):
        return f"{FAIL_JOIN} asks every join to fail"
    return None


def kubeadm(argv: list[str]) -> int:
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    entry = base_entry("kubeadm", argv)
    if command == "token":
        return token(argv, entry)
    if command == "reset":
        return reset(entry)
    if command not in CONFIG_KINDS:
        record(entry)
        if command == "version":
            print(version() if "short" in argv else f'kubeadm version: &version.Info{{GitVersion:"{version()}"}}')
        return 0
    why = sabotaged(command)
    if why is not None:  # as a kubeadm whose control plane never came up: kubelet.conf written, then an error
        write_kubeconfig("/etc/kubernetes/kubelet.conf", "https://127.0.0.1:6443")
        entry.update(exit=1, error=f"sabotaged: {why}", finished=time.time())
        record(entry)
        print(f"error execution phase wait-control-plane: sabotaged by the test ({why})", file=sys.stderr)
        return 1
    try:
        bring_up(command, load_config(entry["config"], command), entry)
    except (StandinError, OSError, LookupError, TypeError, AttributeError) as err:
        entry.update(exit=1, error=f"{type(err).__name__}: {err}", finished=time.time())
        record(entry)
        print(f"error execution phase preflight: {err}", file=sys.stderr)
        return 1
    entry.update(exit=0, finished=time.time())
    record(entry)
    if command == "init":
        for registered in load_config(entry["config"], command)["InitConfiguration"].get("bootstrapTokens") or []:
            remember_token(str(registered.get("token")))
    print("Your Kubernetes control-plane has initialized successfully!" if command == "init"
          else "This node has joined the cluster.")
    return 0


# --- kubectl and kubelet --------------------------------------------------------------------


def kubectl(argv: list[str]) -> int:
    entry = base_entry("kubectl", argv)
    manifest = option(argv, "-f", "--filename")
    if manifest is not None:
        if manifest == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path(manifest), "rb") as handle:
                data = handle.read()
        entry.update(manifest=manifest, manifest_sha256=hashlib.sha256(data).hexdigest(),
                     manifest_text=data.decode("utf-8", "replace"))
    record(entry)
    if "version" in argv:
        print(f"Client Version: {version()}")
    return 0


def kubelet(argv: list[str]) -> int:
    record(base_entry("kubelet", argv))
    if "--version" in argv or "version" in argv:
        print(f"Kubernetes {version()}")
        return 0
    if os.environ.get("LABCTL_STANDIN_WAIT") == "0":
        return 0
    while True:  # a service: stays up like the real kubelet
        time.sleep(3600)


TOOLS = {"kubeadm": kubeadm, "kubectl": kubectl, "kubelet": kubelet}


def main(argv: list[str]) -> int:
    tool = os.path.basename(argv[0])
    if tool not in TOOLS:
        print(f"standin: call me as one of {', '.join(TOOLS)}, not {tool}", file=sys.stderr)
        return 2
    return TOOLS[tool](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
