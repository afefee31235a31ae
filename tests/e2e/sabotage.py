"""``python -m tests.e2e.sabotage --files SPEC ARGS...``: labctl ARGS, with the files of SPEC (JSON: node ->
{path: content}) added to those nodes' seeds (the drills' files: an apt pin, a stand-in's failure switch).

Every seed ISO passes through ``labctl.guest.seed.build_seed_iso``; this wraps it so that the named
nodes' user-data changes as said, and nothing else does. Test code only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

import labctl.guest.seed
import labctl.ops.lifecycle
from labctl.cli.main import main

Build = Callable[[Mapping[str, bytes]], bytes]
Change = Callable[[bytes], bytes]


def with_files(files: Mapping[str, str]) -> Change:
    """A change of user-data that adds ``files`` (path -> content) to its write_files."""

    def change(user_data: bytes) -> bytes:
        data = yaml.safe_load(user_data)
        data["write_files"] += [{"path": path, "content": content, "owner": "root:root", "permissions": "0644"}
                                for path, content in files.items()]
        return ("#cloud-config\n" + yaml.safe_dump(data, sort_keys=False)).encode()

    return change


def sabotaging(changes: Mapping[str, Change], build: Build) -> Build:
    def build_seed_iso(files: Mapping[str, bytes]) -> bytes:
        node = yaml.safe_load(files["meta-data"]).get("local-hostname")
        if node in changes:
            files = {**files, "user-data": changes[node](files["user-data"])}
        return build(files)

    return build_seed_iso


def run(argv: list[str]) -> None:
    if argv[:1] != ["--files"] or len(argv) < 3:
        raise SystemExit("usage: python -m tests.e2e.sabotage --files SPEC LABCTL-ARGS...")
    spec = json.loads(Path(argv[1]).read_text())
    changes, args = {node: with_files(files) for node, files in spec.items()}, argv[2:]
    wrapped = sabotaging(changes, labctl.guest.seed.build_seed_iso)
    for module in (labctl.guest.seed, labctl.ops.lifecycle):  # lifecycle imported the name itself
        module.build_seed_iso = wrapped  # type: ignore[attr-defined]
    main(args)


if __name__ == "__main__":
    run(sys.argv[1:])
