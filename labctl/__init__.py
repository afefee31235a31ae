"""labctl: build a real Kubernetes HA lab out of local virtual machines."""

__version__ = "0.1.0"
