"""tests/httpserver.py's server in a process of its own, serving one file (mapped, not read into memory)
at /image.qcow2: ``python -m benchmarks.serve_file FILE``; prints the URL, then serves until ended by
its pid. In a process of its own so that it never competes for the GIL with what it measures."""

import mmap
import signal
import sys
import threading
from pathlib import Path

from tests.httpserver import HTTPTestServer


def main(path: Path) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as body, \
            HTTPTestServer() as server:
        print(server.add("/image.qcow2", body), flush=True)  # type: ignore[arg-type]  # a buffer serves too
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
