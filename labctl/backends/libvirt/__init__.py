"""The libvirt backend (libvirt-python): the only package that imports libvirt."""

from labctl.backends.libvirt.backend import LibvirtBackend

__all__ = ["LibvirtBackend"]
