"""``python -m tests.e2e.sabotage NODE ARGS...``: labctl ARGS, with NODE's kubeadm config broken in its seed.

The e2e sabotage case: every seed ISO passes through ``labctl.guest.seed.build_seed_iso``; this wraps it
so that NODE's user-data gets unparsable text in place of /etc/labctl/kubeadm.yaml. Nothing else
changes, so ``labctl up`` must report NODE failing at its kubeadm step. Test code only.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import yaml

import labctl.guest.seed
import labctl.ops.lifecycle
from labctl.cli.main import main

KUBEADM_CONFIG = "/etc/labctl/kubeadm.yaml"
BROKEN = "this is: [not a kubeadm configuration\n"


def break_user_data(user_data: bytes) -> bytes:
    """``user_data`` with the kubeadm config's content replaced by :data:`BROKEN`."""
    data = yaml.safe_load(user_data)
    files = [entry for entry in data.get("write_files", []) if entry.get("path") == KUBEADM_CONFIG]
    if len(files) != 1:
        raise SystemExit(f"sabotage: expected one {KUBEADM_CONFIG} in write_files, found {len(files)}")
    files[0]["content"] = BROKEN
    files[0].pop("encoding", None)
    return ("#cloud-config\n" + yaml.safe_dump(data, sort_keys=False)).encode()


def sabotaging(node: str, build):  # type: ignore[no-untyped-def]
    def build_seed_iso(files: Mapping[str, bytes]) -> bytes:
        meta = yaml.safe_load(files["meta-data"])
        if meta.get("local-hostname") == node:
            files = {**files, "user-data": break_user_data(files["user-data"])}
        return build(files)

    return build_seed_iso


def run(argv: list[str]) -> None:
    node, args = argv[0], argv[1:]
    original = labctl.guest.seed.build_seed_iso
    wrapped = sabotaging(node, original)
    for module in (labctl.guest.seed, labctl.ops.lifecycle):  # lifecycle imported the name itself
        module.build_seed_iso = wrapped  # type: ignore[attr-defined]
    main(args)


if __name__ == "__main__":
    run(sys.argv[1:])
