"""A small HTTP server that the e2e tests run INSIDE their network namespace (``ip netns exec``).

It binds 0.0.0.0:PORT in the namespace, so it answers on the NAT network's host side (libvirt's
bridge address) as soon as that network exists. It serves:

* ``/whoami``: the peer's address as the body, so a node can show from where its packets
  arrive (the gateway's masquerading is seen in the source address);
* files and directory trees given on the command line as ``URL_PREFIX=PATH`` (the apt-path lab's
  signed Kubernetes repository under ``/k8s/``): nothing outside those paths.

Every request is one JSON line in the log file. The test ends it by its pid.

    python3 netns_server.py PORT LOG [URL_PREFIX=PATH ...]
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar


class Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, Path]] = {}
    log_path: Path = Path("/dev/null")
    lock = threading.Lock()
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        peer = self.client_address[0]
        if self.path == "/whoami":
            status, body = 200, peer.encode()
        else:
            found = self.file()
            status, body = (200, found.read_bytes()) if found else (404, b"not found\n")
        entry = {"time": time.time(), "peer": peer, "path": self.path, "status": status,
                 "user_agent": self.headers.get("User-Agent")}
        with self.lock, self.log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def file(self) -> Path | None:
        path = self.path.split("?", 1)[0]
        for prefix, target in sorted(self.routes.items(), key=lambda item: -len(item[0])):
            if target.is_file() and path == prefix:
                return target
            if target.is_dir() and path.startswith(prefix):
                candidate = (target / path[len(prefix):].lstrip("/")).resolve()
                if candidate.is_file() and candidate.is_relative_to(target.resolve()):
                    return candidate
        return None


def main(argv: list[str]) -> int:
    port, log = int(argv[1]), Path(argv[2])
    Handler.log_path = log
    Handler.routes = {prefix: Path(path) for prefix, _, path in (arg.partition("=") for arg in argv[3:])}
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    print(f"listening on 0.0.0.0:{port}", flush=True)
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
