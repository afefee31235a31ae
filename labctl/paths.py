"""Where labctl keeps things on the host (XDG base directories)."""

import os
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def data_root() -> Path:
    """Per-lab state lives in ``data_root() / <lab>`` (0700)."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "labctl"


def cache_root() -> Path:
    """Downloaded and built images live in ``cache_root() / "images"``."""
    return _xdg("XDG_CACHE_HOME", ".cache") / "labctl"
