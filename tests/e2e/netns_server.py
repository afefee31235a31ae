"""A small HTTP server that the e2e test runs INSIDE its network namespace (``ip netns exec``).

It binds 0.0.0.0:PORT in the namespace, so it answers on the NAT network's host side (libvirt's
bridge address) as soon as that network exists. It serves two things:

* ``/whoami``: the peer's address as the body, so a node can show from where its packets
  arrive (the gateway's masquerading is seen in the source address);
* ``/cni.yaml``: the CNI manifest file given on the command line (the lab has no internet;
  lab.yaml's ``kubernetes.cni_manifest`` points here).

Every request is one JSON line in the log file. The test ends it by its pid.

    python3 netns_server.py PORT MANIFEST LOG
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    manifest: bytes = b""
    log_path: Path = Path("/dev/null")
    lock = threading.Lock()
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        peer = self.client_address[0]
        if self.path == "/whoami":
            status, body = 200, peer.encode()
        elif self.path == "/cni.yaml":
            status, body = 200, self.manifest
        else:
            status, body = 404, b"not found\n"
        entry = {"time": time.time(), "peer": peer, "path": self.path, "status": status,
                 "user_agent": self.headers.get("User-Agent")}
        with self.lock, self.log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main(argv: list[str]) -> int:
    port, manifest, log = int(argv[1]), Path(argv[2]), Path(argv[3])
    Handler.manifest, Handler.log_path = manifest.read_bytes(), log
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    print(f"listening on 0.0.0.0:{port}", flush=True)
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
