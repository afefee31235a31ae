"""Accelerator choice: KVM only where it really works, else QEMU's TCG."""

import os
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import ConfigError


@dataclass(frozen=True)
class HostFacts:
    kvm_device: bool  # /dev/kvm exists and is usable by us
    modules: frozenset[str]  # loaded kernel modules of interest


KVM = "kvm"
TCG = "tcg"  # QEMU's software emulation


@dataclass(frozen=True)
class Accel:
    kind: str  # KVM or TCG; a backend maps it to its own setting (libvirt: <domain type="kvm|qemu">)
    reason: str

    @property
    def emulated(self) -> bool:
        return self.kind == TCG


def read_host_facts(sys_module: Path = Path("/sys/module"), dev_kvm: Path = Path("/dev/kvm")) -> HostFacts:
    names = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
    modules = frozenset(name for name in names if (sys_module / name).exists())
    return HostFacts(dev_kvm.exists() and os.access(dev_kvm, os.R_OK | os.W_OK), modules)


def choose_accel(requested: str, facts: HostFacts) -> Accel:
    """Resolve ``accel: auto|kvm|tcg`` against the host."""
    if requested == "tcg":
        return Accel(TCG, "TCG requested (software emulation)")
    usable = facts.kvm_device and bool(facts.modules & {"kvm_intel", "kvm_amd"})
    if requested == "kvm":
        if not usable:
            raise ConfigError("accel", "kvm requested but KVM is not usable here (" + _why_not(facts) + "); use tcg")
        return Accel(KVM, "KVM requested")
    if usable:
        return Accel(KVM, "KVM available")
    return Accel(TCG, f"using TCG, software emulation, several times slower: {_why_not(facts)}")


def _why_not(facts: HostFacts) -> str:
    if "kvm_pvm" in facts.modules and not facts.modules & {"kvm_intel", "kvm_amd"}:
        return "/dev/kvm is PVM-only (kvm_pvm, no kvm_intel/kvm_amd); stock guest kernels hang under it"
    if not facts.kvm_device:
        return "no usable /dev/kvm"
    return "neither kvm_intel nor kvm_amd is loaded"
