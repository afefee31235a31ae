"""CNI manifests for the tests: flannel's release structure, and plans that carry one (as `up` makes them)."""

from __future__ import annotations

from pathlib import Path

from labctl.guest.cni import adapt_manifest, cni_manifest
from labctl.lab.plan import Plan

FLANNEL = (Path(__file__).resolve().parent / "data" / "kube-flannel-v0.28.4.yml").read_text()


def with_cni(plan: Plan, text: str = FLANNEL) -> Plan:
    """``plan`` carrying ``text`` adapted to its pod network, as `up` hands it to the seeds."""
    return plan.with_cni_manifest(adapt_manifest(text, cni_manifest(plan), plan.lab.kubernetes.pod_cidr))
