"""Backends by name: the one place that picks a hypervisor. Their modules (and their libraries,
libvirt-python or VBoxManage) are imported only when a backend of that name is opened."""

from __future__ import annotations

import importlib

from labctl.backends.base import Backend, Reach
from labctl.errors import ConfigError

# name -> (module, class)
BACKENDS = {
    "libvirt": ("labctl.backends.libvirt", "LibvirtBackend"),
    "virtualbox": ("labctl.backends.virtualbox", "VirtualBoxBackend"),
}


def backend_class(name: str) -> type[Backend]:
    try:
        module, cls = BACKENDS[name]
    except KeyError:
        raise ConfigError("backend", f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}") from None
    found = getattr(importlib.import_module(module), cls)
    assert issubclass(found, Backend)
    return found


def open_backend(name: str, target: str | None = None) -> Backend:
    """Connect to the hypervisor of backend ``name`` (``target``: a libvirt URI; None for its default)."""
    return backend_class(name).open(target)


def unconnected_backend(name: str, target: str | None = None) -> Backend:
    """Backend ``name`` without a connection: enough to render its definitions (see Backend.unconnected)."""
    return backend_class(name).unconnected(target)


def reach(name: str, target: str | None = None) -> Reach:
    return backend_class(name).reach(target)
