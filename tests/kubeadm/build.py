"""Build the real kubeadm (and the helpers host-side tests need); the binary's path is the last line on stdout.

Run from the repository root (``make kubeadm`` does)::

    python3 -m tests.kubeadm.build kubeadm [RELEASE]           kubeadm; RELEASE 1.35 (default) or 1.35.4
    python3 -m tests.kubeadm.build pin [RELEASE]               kubeadm-pin, the CA public-key pin helper
    python3 -m tests.kubeadm.build crictl                      crictl (tests/kubeadm/crictl/go.mod)
    python3 -m tests.kubeadm.build component NAME [RELEASE]    k8s.io/kubernetes/cmd/NAME (kubelet, kube-proxy…)
    python3 -m tests.kubeadm.build pin-module kubeadm RELEASE  rewrite tests/kubeadm/go.mod and go.sum
    python3 -m tests.kubeadm.build pin-module crictl VERSION   rewrite tests/kubeadm/crictl/go.mod and go.sum

Python rather than a shell script: the driver reads ``go`` JSON, holds a lock and installs atomically, and
the tests import the same code (:mod:`tests.kubeadm.tooling`); standard library only, so no virtualenv is
needed. Progress and errors go to stderr; an error exits 1.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.kubeadm.gomodule import CRICTL_DIR, HERE, parse_release, write_crictl_module, write_kubernetes_module
from tests.kubeadm.gotool import BuildError, Go
from tests.kubeadm.tooling import crictl_binary, kubernetes_binary, pin_binary, resolve_release


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tests.kubeadm.build", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("kubeadm").add_argument("release", nargs="?")
    commands.add_parser("pin").add_argument("release", nargs="?")
    commands.add_parser("crictl")
    component = commands.add_parser("component")
    component.add_argument("name")
    component.add_argument("release", nargs="?")
    pin_module = commands.add_parser("pin-module")
    pin_module.add_argument("what", choices=("kubeadm", "crictl"))
    pin_module.add_argument("version")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    if args.command == "kubeadm":
        return kubernetes_binary("kubeadm", args.release or None)
    if args.command == "component":
        return kubernetes_binary(args.name, args.release or None)
    if args.command == "pin":
        return pin_binary(args.release or None)
    if args.command == "crictl":
        return crictl_binary()
    go = Go.find()
    if args.what == "kubeadm":
        write_kubernetes_module(go, HERE, resolve_release(go, args.version))
        return HERE / "go.mod"
    major, minor, patch = parse_release(args.version)
    write_crictl_module(go, CRICTL_DIR, f"v{major}.{minor}.{patch or 0}")
    return CRICTL_DIR / "go.mod"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = run(args)
    except BuildError as error:
        print(f"build: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
