"""Find the data files shipped with labctl (catalog, cloud-init, network templates).

Installed, the top-level data directories are packages under ``labctl.data``;
in a source checkout they sit beside the ``labctl`` package.
"""

import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

# kind -> (installed package, directory in a checkout)
_KINDS = {
    "images": ("labctl.data.images", "images"),
    "cloud-init": ("labctl.data.cloud_init", "cloud-init"),
    "network": ("labctl.data.network", "network"),
}


def data_file(kind: str, name: str) -> Traversable:
    """Return the shipped data file ``name`` of ``kind`` (images, cloud-init, network).

    The result has ``read_text()``/``read_bytes()``/``open()``; it may not exist.
    """
    try:
        package, directory = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {sorted(_KINDS)}") from None
    try:
        return importlib.resources.files(package) / name
    except ModuleNotFoundError:
        # Running from a checkout: labctl.data.* exists only once installed.
        return Path(__file__).resolve().parent.parent / directory / name


def read_text(kind: str, name: str) -> str:
    """The text of a shipped data file, e.g. ``read_text("network", "nat.xml")``."""
    return data_file(kind, name).read_text(encoding="utf-8")
