#!/usr/bin/python3
"""A stand-in for kube-apiserver in the e2e test image: TLS on :6443, /readyz and /livez answer ok.

It serves /etc/kubernetes/pki/apiserver.{crt,key} (made by the kubeadm stand-in, signed by the
lab CA) and records every request, and every TLS handshake that failed, as one JSON line in
/var/lib/labctl-standin/apiserver.jsonl, after a first ``listening`` line. Each response names
the node in an ``X-Standin-Node`` header, so a client behind HAProxy can tell who answered.
The TLS handshake happens in the request's thread: a client that connects and says nothing
(a TCP health check) cannot stall the others.

LABCTL_STANDIN_ROOT puts every path under a directory and LABCTL_STANDIN_LISTEN (host:port,
port 0 for any) changes the address, for tests on the host.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTH_PATHS = ("/readyz", "/livez", "/healthz")
VERSION_FILE = "/usr/lib/labctl-standin/VERSION"  # the packages' version, e.g. 1.35.0-1.1+labctl.standin
HANDSHAKE_TIMEOUT = 10
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


def path(name: str) -> str:
    return os.path.join(os.environ.get("LABCTL_STANDIN_ROOT", "/"), name.lstrip("/"))


def version_info() -> dict[str, str]:
    """/version as the Kubernetes of the installed stand-in packages."""
    try:
        with open(path(VERSION_FILE), encoding="ascii") as handle:
            release = handle.read().strip().split("-")[0]
    except OSError:
        release = "1.35.0"
    major, minor, _patch = release.split(".")
    return {"major": major, "minor": minor, "gitVersion": f"v{release}", "platform": "linux/amd64"}


def cluster_info() -> bytes:
    """The kube-public/cluster-info ConfigMap, as token discovery reads it: the CA, anonymously."""
    with open(path("/etc/kubernetes/pki/ca.crt"), "rb") as handle:
        ca_data = base64.b64encode(handle.read()).decode()
    kubeconfig = {"apiVersion": "v1", "kind": "Config",
                  "clusters": [{"name": "", "cluster": {"server": "", "certificate-authority-data": ca_data}}]}
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info"},
                       "data": {"kubeconfig": json.dumps(kubeconfig)}}).encode()


class Journal:
    """apiserver.jsonl, appended to from many threads."""

    def __init__(self, name: str) -> None:
        os.makedirs(os.path.dirname(name), mode=0o700, exist_ok=True)
        self._handle = open(name, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, **entry: object) -> None:
        line = json.dumps({"time": time.time(), **entry}, sort_keys=True)
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, journal: Journal) -> None:
        self.context, self.journal, self.node = context, journal, socket.gethostname()
        super().__init__(address, Handler)

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as err:
            self.journal.write(event="handshake-failed", peer=client_address[0], error=type(err).__name__)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        self.journal.write(event="error", peer=client_address[0], error=str(sys.exc_info()[1]))


class Handler(BaseHTTPRequestHandler):
    server: TLSServer
    protocol_version = "HTTP/1.1"
    timeout = HANDSHAKE_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:  # the journal records instead
        pass

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0]
        if route in HEALTH_PATHS:
            status, body, kind = 200, b"ok", "text/plain"
        elif route == CLUSTER_INFO:
            status, body, kind = 200, cluster_info(), "application/json"
        elif route == "/version":
            status, body, kind = 200, json.dumps(version_info()).encode(), "application/json"
        else:
            status, body, kind = 404, b"not found", "text/plain"
        self.server.journal.write(event="request", peer=self.client_address[0], method="GET", path=self.path,
                                  status=status, user_agent=self.headers.get("User-Agent"))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Standin-Node", self.server.node)
        self.end_headers()
        self.wfile.write(body)


def main() -> int:
    host, _, port = os.environ.get("LABCTL_STANDIN_LISTEN", "0.0.0.0:6443").rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(path("/etc/kubernetes/pki/apiserver.crt"), path("/etc/kubernetes/pki/apiserver.key"))
    journal = Journal(path("/var/lib/labctl-standin/apiserver.jsonl"))
    server = TLSServer((host, int(port)), context, journal)
    journal.write(event="listening", address=host, port=server.server_address[1], node=server.node)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        journal.write(event="stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
