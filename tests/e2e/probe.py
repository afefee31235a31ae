"""Runs INSIDE a lab node (``sudo python3 - GATEWAY --system|--no-system NAME...``, fed on stdin
through ``labctl ssh``) and prints one JSON object: what the e2e checks look at, in one round trip.

Python's standard library only (the guest has python3 for cloud-init). Names are looked up with a
DNS query sent straight to GATEWAY:53 and, with ``--system``, through the node's own resolver too
(not on the gateway, whose resolver is upstream and would only time out on lab names).
"""

import json
import random
import socket
import struct
import subprocess
import sys
import time


def run(*argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"rc": -1, "out": "", "err": str(err)}
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}


def as_json(result):
    try:
        return json.loads(result["out"])
    except ValueError:
        return None


def dns_query(server, name, timeout=3.0, tries=3):
    """A records for ``name`` asked of ``server`` over UDP; None if it never answered."""
    for _ in range(tries):
        ident = random.randrange(1 << 16)
        question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
        packet = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.sendto(packet, (server, 53))
                reply = sock.recv(4096)
            except OSError:
                continue
        if struct.unpack("!H", reply[:2])[0] == ident:
            return parse_answers(reply)
    return None


def skip_name(data, offset):
    while True:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length


def parse_answers(reply):
    rcode = reply[3] & 0x0F
    questions, answers = struct.unpack("!HH", reply[4:8])
    offset = 12
    for _ in range(questions):
        offset = skip_name(reply, offset) + 4
    found = []
    for _ in range(answers):
        offset = skip_name(reply, offset)
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", reply[offset:offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(reply[offset:offset + 4]))
        offset += length
    return {"rcode": rcode, "a": found}


def system_lookup(name):
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)})
    except OSError as err:
        return str(err)


def cloud_init_log_problems():
    try:
        with open("/var/log/cloud-init.log", encoding="utf-8", errors="replace") as log:
            return [line.rstrip() for line in log if " WARNING" in line or " ERROR" in line or "Traceback" in line]
    except OSError as err:
        return [f"cannot read /var/log/cloud-init.log: {err}"]


def main(argv):
    gateway, system, names = argv[1], argv[2] == "--system", argv[3:]
    took = {}

    def timed(label, call, *args):
        began = time.monotonic()
        try:
            return call(*args)
        finally:
            took[label] = round(time.monotonic() - began, 2)

    status = timed("cloud-init status", run, "cloud-init", "status", "--long", "--format", "json")
    facts = {
        "hostname": socket.gethostname(),
        "fqdn": run("hostname", "--fqdn")["out"].strip(),
        "links": as_json(run("ip", "-j", "addr", "show")),
        "routes": as_json(run("ip", "-j", "route", "show", "default")),
        "resolvers": run("resolvectl", "dns")["out"],
        "cloud_init": {"rc": status["rc"], "status": as_json(status), "out": status["out"][-2000:]},
        "cloud_init_log_problems": timed("cloud-init.log", cloud_init_log_problems),
        "dns_via_gateway": timed("dns via gateway", lambda: {name: dns_query(gateway, name) for name in names}),
        "dns_system": timed("dns system", lambda: {name: system_lookup(name) for name in names if system}),
        "took": took,
    }
    json.dump(facts, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
