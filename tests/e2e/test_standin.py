"""The stand-ins' own behaviour, on the host: a temporary root instead of /, loopback only."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from labctl.pki.x509 import ca_cert_hash, new_ca
from tests.e2e.image import PACKAGES, build_debs, with_standins

STANDIN = Path(__file__).resolve().parent / "standin"
API = "api.e2e.internal"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the kubeadm stand-in signs with openssl")

INIT_CONFIG = f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens: [{{token: abcdef.0123456789abcdef}}]
localAPIEndpoint: {{advertiseAddress: 127.0.0.1, bindPort: 6443}}
nodeRegistration: {{name: master1}}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
controlPlaneEndpoint: {API}:6443
networking: {{podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12}}
apiServer: {{certSANs: [{API}, 10.0.0.11]}}
"""


def join_config(endpoint: str, control_plane: bool, pin: str) -> str:
    text = f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: {endpoint}
    token: abcdef.0123456789abcdef
    caCertHashes: ["{pin}"]
nodeRegistration: {{name: node}}
"""
    return text + ("controlPlane: {localAPIEndpoint: {advertiseAddress: 127.0.0.2}}\n" if control_plane else "")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A node's root: the lab CA distributed, the tools on a bin dir."""
    pki = tmp_path / "etc/kubernetes/pki"
    pki.mkdir(parents=True)
    cert, key = new_ca("kubernetes", datetime.now(UTC))
    (pki / "ca.crt").write_text(cert)
    (pki / "ca.key").write_text(key)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kubeadm", "kubectl", "kubelet"):
        (bin_dir / tool).symlink_to(STANDIN / "standin.py")
    return tmp_path


def env_for(root: Path) -> dict[str, str]:
    return {**os.environ, "LABCTL_STANDIN_ROOT": str(root), "LABCTL_STANDIN_SYSTEMCTL": "true",
            "LABCTL_STANDIN_WAIT": "0"}


def tool(root: Path, name: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(root / "bin" / name), *args], env=env_for(root), input=stdin,
                          capture_output=True, text=True, timeout=60)


def calls(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "var/lib/labctl-standin/calls.jsonl").read_text().splitlines()]


def write(root: Path, name: str, text: str) -> str:
    target = root / name.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return name


def test_kubeadm_init_records_the_call_and_makes_a_ca_signed_serving_cert(root: Path) -> None:
    config = write(root, "/etc/labctl/kubeadm.yaml", INIT_CONFIG)
    done = tool(root, "kubeadm", "init", "--config", config)
    assert done.returncode == 0, done.stderr
    [entry] = calls(root)
    assert entry["tool"] == "kubeadm" and entry["argv"] == ["init", "--config", config]
    assert entry["config"] == INIT_CONFIG and entry["exit"] == 0
    assert entry["ca_sha256"] == entry["pki"]["ca.crt"]
    assert entry["serving_address"] == "127.0.0.1"
    pki = root / "etc/kubernetes/pki"
    cert = x509.load_pem_x509_certificate((pki / "apiserver.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert API in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "10.0.0.11"}
    admin = json.loads((root / "etc/kubernetes/admin.conf").read_text())
    assert admin["clusters"][0]["cluster"]["server"] == f"https://{API}:6443"


def test_token_create_and_list_know_init_tokens_and_new_ones(root: Path) -> None:
    assert tool(root, "kubeadm", "init", "--config", write(root, "/etc/k.yaml", INIT_CONFIG)).returncode == 0
    made = tool(root, "kubeadm", "token", "create", "zyxwvu.9876543210zyxwvu", "--ttl", "24h0m0s",
                "--kubeconfig", "/etc/kubernetes/admin.conf", "--description", "added nodes")
    assert made.returncode == 0 and made.stdout.strip() == "zyxwvu.9876543210zyxwvu"
    listed = tool(root, "kubeadm", "token", "list", "--kubeconfig", "/etc/kubernetes/admin.conf")
    tokens = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert tokens == ["abcdef.0123456789abcdef", "zyxwvu.9876543210zyxwvu"]
    assert [entry.get("token") for entry in calls(root)] == [None, "zyxwvu.9876543210zyxwvu", None]
    assert tool(root, "kubeadm", "token", "delete", "abcdef").returncode == 1  # not played: never faked silently


def test_kubeadm_refuses_a_broken_config_and_records_why(root: Path) -> None:
    config = write(root, "/etc/labctl/kubeadm.yaml", "this: [is not\n")
    done = tool(root, "kubeadm", "init", "--config", config)
    assert done.returncode == 1 and "not YAML" in done.stderr
    [entry] = calls(root)
    assert entry["exit"] == 1 and "not YAML" in entry["error"]
    assert not (root / "etc/kubernetes/pki/apiserver.crt").exists()


@pytest.fixture
def apiserver(root: Path):
    """The fake API server on 127.0.0.1 (any port), serving the init stand-in's certificate."""
    assert tool(root, "kubeadm", "init", "--config", write(root, "/etc/k.yaml", INIT_CONFIG)).returncode == 0
    env = {**env_for(root), "LABCTL_STANDIN_LISTEN": "127.0.0.1:0"}
    proc = subprocess.Popen([sys.executable, str(STANDIN / "fake_apiserver.py")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = root / "var/lib/labctl-standin/apiserver.jsonl"
    try:
        deadline = time.monotonic() + 20
        while not (journal.exists() and journal.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        yield json.loads(journal.read_text().splitlines()[0])["port"], journal
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.races
def test_fake_apiserver_answers_readyz_over_tls_and_records_requests(root: Path, apiserver) -> None:
    port, journal = apiserver
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # a TCP check: no handshake
    context = ssl.create_default_context(cafile=str(root / "etc/kubernetes/pki/ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.request("GET", "/readyz", headers={"User-Agent": "curl/8"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"ok")
    assert resp.getheader("X-Standin-Node") == socket.gethostname()
    conn.close()
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    assert events[0]["event"] == "listening"
    assert any(e["event"] == "handshake-failed" for e in events)
    [request] = [e for e in events if e["event"] == "request"]
    assert (request["path"], request["status"], request["user_agent"]) == ("/readyz", 200, "curl/8")


@pytest.mark.races
def test_joins_pin_the_discovered_ca_and_only_control_plane_joins_serve(root: Path, apiserver,
                                                                       tmp_path_factory) -> None:
    port, _ = apiserver
    pin = ca_cert_hash((root / "etc/kubernetes/pki/ca.crt").read_text())
    worker = tmp_path_factory.mktemp("worker")  # no CA: discovery brings it
    (worker / "bin").mkdir()
    (worker / "bin/kubeadm").symlink_to(STANDIN / "standin.py")
    done = tool(worker, "kubeadm", "join", "--config",
                write(worker, "/etc/w.yaml", join_config(f"127.0.0.1:{port}", False, pin)))
    assert done.returncode == 0, done.stderr
    assert (worker / "etc/kubernetes/pki/ca.crt").read_text() == (root / "etc/kubernetes/pki/ca.crt").read_text()
    assert not (worker / "etc/kubernetes/pki/apiserver.crt").exists()
    [join] = calls(worker)
    assert join["probe"]["ca_hash"] == pin and join["probe"]["answered_by"] == socket.gethostname()

    (root / "etc/kubernetes/pki/apiserver.crt").unlink()
    master = write(root, "/etc/m.yaml", join_config(f"127.0.0.1:{port}", True, pin))
    done = tool(root, "kubeadm", "join", "--config", master)
    assert done.returncode == 0, done.stderr
    assert (root / "etc/kubernetes/pki/apiserver.crt").exists()
    assert calls(root)[-1]["serving_address"] == "127.0.0.2"


@pytest.mark.races
def test_a_join_with_the_wrong_ca_pin_fails(root: Path, apiserver) -> None:
    port, _ = apiserver
    wrong = "sha256:" + "0" * 64
    done = tool(root, "kubeadm", "join", "--config", write(root, "/etc/w.yaml",
                                                           join_config(f"127.0.0.1:{port}", False, wrong)))
    assert done.returncode == 1 and "matches none of" in done.stderr
    assert calls(root)[-1]["exit"] == 1


def test_kubectl_records_the_applied_manifest_and_kubelet_its_arguments(root: Path) -> None:
    manifest = write(root, "/tmp/cni.yaml", "kind: List\n")
    assert tool(root, "kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "apply", "-f", manifest).returncode == 0
    assert tool(root, "kubelet", "--config=/var/lib/kubelet/config.yaml").returncode == 0
    applied, kubelet = calls(root)
    assert applied["manifest"] == manifest and applied["manifest_text"] == "kind: List\n"
    assert applied["manifest_sha256"] == hashlib.sha256(b"kind: List\n").hexdigest()
    assert kubelet["tool"] == "kubelet" and kubelet["argv"] == ["--config=/var/lib/kubelet/config.yaml"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_standin_packages_install_the_tools_as_symlinks(tmp_path: Path) -> None:
    debs = {deb.stem: deb for deb in build_debs(tmp_path)}
    assert list(debs) == ["labctl-standin", "kubeadm", "kubelet", "kubectl"]
    listing = subprocess.run(["dpkg-deb", "-c", str(debs["kubeadm"])], capture_output=True, text=True,
                             check=True).stdout
    assert "./usr/bin/kubeadm -> /usr/lib/labctl-standin/standin.py" in listing
    kubelet = subprocess.run(["dpkg-deb", "-c", str(debs["kubelet"])], capture_output=True, text=True).stdout
    assert "usr/lib/systemd/system/kubelet.service" in kubelet
    assert "Depends: python3, python3-yaml, openssl" in subprocess.run(
        ["dpkg-deb", "-f", str(debs["labctl-standin"])], capture_output=True, text=True).stdout
    assert "openssl" in PACKAGES


def test_standin_hooks_go_after_the_builders_own_customize_hooks(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    run = with_standins(lambda argv: seen.append(list(argv)), [tmp_path / "kubeadm.deb"])
    run(["mmdebstrap", "--mode=root", "--customize-hook=a", "--customize-hook=b", "trixie", "/root", "deb x"])
    run(["qemu-img", "convert"])
    argv = seen[0]
    assert argv[:4] == ["mmdebstrap", "--mode=root", "--customize-hook=a", "--customize-hook=b"]
    assert argv[-3:] == ["trixie", "/root", "deb x"]
    assert any("dpkg -i /tmp/labctl-standin-debs/kubeadm.deb" in arg for arg in argv)
    assert seen[1] == ["qemu-img", "convert"]


def test_kubeadm_reset_removes_what_the_real_one_removes_and_records_it(root: Path) -> None:
    assert tool(root, "kubeadm", "init", "--config", write(root, "/etc/k.yaml", INIT_CONFIG)).returncode == 0
    manifests = root / "etc/kubernetes/manifests"
    manifests.mkdir(parents=True)
    (manifests / "etcd.yaml").write_text("kind: Pod\n")
    done = tool(root, "kubeadm", "reset", "-f", "--cri-socket", "unix:///var/run/containerd/containerd.sock")
    assert done.returncode == 0, done.stderr
    entry = calls(root)[-1]
    assert entry["argv"][:2] == ["reset", "-f"] and entry["exit"] == 0
    assert {"/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki/ca.crt",
            "/etc/kubernetes/pki/apiserver.key", "/etc/kubernetes/manifests/etcd.yaml"} <= set(entry["removed"])
    assert not any((root / "etc/kubernetes/pki").rglob("*.*")) and not (root / "etc/kubernetes/admin.conf").exists()


def test_an_init_fails_once_on_purpose_after_writing_kubelet_conf(root: Path) -> None:
    write(root, "/var/lib/labctl-standin/fail-init-once", "drill\n")
    config = write(root, "/etc/k.yaml", INIT_CONFIG)
    failed = tool(root, "kubeadm", "init", "--config", config)
    assert failed.returncode == 1 and "error execution phase wait-control-plane" in failed.stderr
    assert (root / "etc/kubernetes/kubelet.conf").exists()
    assert tool(root, "kubeadm", "init", "--config", config).returncode == 0  # once only
    assert [(c["argv"][0], c["exit"]) for c in calls(root)] == [("init", 1), ("init", 0)]
    assert calls(root)[0]["error"].startswith("sabotaged: ")


def test_every_join_fails_while_the_drill_file_exists(root: Path) -> None:
    write(root, "/var/lib/labctl-standin/fail-join", "drill\n")
    config = write(root, "/etc/k.yaml", join_config("127.0.0.1:1", False, "sha256:" + "0" * 64))
    (root / "etc/kubernetes/pki/ca.crt").unlink()  # a worker: no CA there before discovery writes it
    for _ in range(2):
        failed = tool(root, "kubeadm", "join", "--config", config)
        assert failed.returncode == 1 and "sabotaged by the test" in failed.stderr, failed.stderr
    assert [(c["argv"][0], c["exit"]) for c in calls(root)] == [("join", 1), ("join", 1)]
    assert (root / "etc/kubernetes/kubelet.conf").exists()


def test_the_standins_play_the_version_they_are_packaged_as(root: Path) -> None:
    assert tool(root, "kubeadm", "version", "-o", "short").stdout.strip() == "v1.35.0"  # no package: the default
    write(root, "/usr/lib/labctl-standin/VERSION", "1.34.2-1.1+labctl.standin\n")
    assert tool(root, "kubeadm", "version", "-o", "short").stdout.strip() == "v1.34.2"


class EtcdVersion:
    """A TLS server on 127.0.0.1 that, like etcd with client-cert-auth, answers /version only to a client
    certificate signed by its CA: kubeadm's ExternalEtcdVersion preflight talks to it."""

    def __init__(self, root: Path) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from labctl.pki.x509 import new_leaf_cert

        now = datetime.now(UTC)
        ca, ca_key = new_ca("etcd-ca", now)
        server, server_key = new_leaf_cert(ca, ca_key, "etcd1", now, usage="server", addresses=["127.0.0.1"])
        client, client_key = new_leaf_cert(ca, ca_key, "kube-apiserver-etcd-client", now)
        self.files = {"/etc/kubernetes/pki/etcd/ca.crt": ca, "/etc/kubernetes/pki/apiserver-etcd-client.crt": client,
                      "/etc/kubernetes/pki/apiserver-etcd-client.key": client_key}
        for name, text in self.files.items():
            write(root, name, text)
        work = root / "etcd-server"
        work.mkdir()
        (work / "server.crt").write_text(server)
        (work / "server.key").write_text(server_key)
        (work / "ca.crt").write_text(ca)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(work / "server.crt", work / "server.key")
        context.load_verify_locations(work / "ca.crt")
        context.verify_mode = ssl.CERT_REQUIRED

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps({"etcdserver": "3.5.16", "etcdcluster": "3.5.0"}).encode()
                self.send_response(200 if self.path == "/version" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> EtcdVersion:
        import threading

        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def external_config(endpoints: list[str]) -> str:
    return INIT_CONFIG + (
        "etcd:\n  external:\n    endpoints: [" + ", ".join(endpoints) + "]\n"
        "    caFile: /etc/kubernetes/pki/etcd/ca.crt\n"
        "    certFile: /etc/kubernetes/pki/apiserver-etcd-client.crt\n"
        "    keyFile: /etc/kubernetes/pki/apiserver-etcd-client.key\n")


def test_init_with_external_etcd_asks_every_endpoint_for_its_version_first(root: Path) -> None:
    with EtcdVersion(root) as etcd:
        done = tool(root, "kubeadm", "init", "--config", write(root, "/etc/k.yaml", external_config([etcd.url])))
        assert done.returncode == 0, done.stderr
        [entry] = calls(root)
        assert entry["etcd_external_versions"] == {etcd.url: "3.5.16"}
        assert entry["pki"]["apiserver-etcd-client.crt"] == hashlib.sha256(
            etcd.files["/etc/kubernetes/pki/apiserver-etcd-client.crt"].encode()).hexdigest()
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            dead = f"https://127.0.0.1:{unused.getsockname()[1]}"
        done = tool(root, "kubeadm", "init", "--config", write(root, "/etc/k.yaml", external_config([etcd.url, dead])))
        assert done.returncode == 1 and "ExternalEtcdVersion" in done.stderr and dead in done.stderr
