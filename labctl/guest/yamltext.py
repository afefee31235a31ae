"""YAML for files people read on a node (seeds, manifests): multi-line strings as literal blocks."""

from typing import Any

import yaml


class LiteralDumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings (scripts, PEM, JSON, configs) as ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


LiteralDumper.add_representer(str, _represent_str)


def dump_documents(documents: list[Any]) -> str:
    """Several YAML documents, ``---`` before each."""
    return yaml.dump_all(documents, Dumper=LiteralDumper, sort_keys=False, default_flow_style=False,
                         explicit_start=True, width=1000)
