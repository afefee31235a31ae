"""Accelerator choice: KVM only where it really works, else QEMU's TCG; a hypervisor without software
emulation (VirtualBox) gets its hardware virtualization or a refusal."""

import os
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import ConfigError


@dataclass(frozen=True)
class HostFacts:
    kvm_device: bool  # /dev/kvm exists and is usable by us
    modules: frozenset[str]  # loaded kernel modules of interest
    emulation: bool = True  # the hypervisor can fall back to software emulation (QEMU's TCG; VirtualBox cannot)
    hardware: bool | None = None  # VT-x/AMD-V as the hypervisor itself reports it; None: judged by KVM above


KVM = "kvm"
TCG = "tcg"  # QEMU's software emulation


@dataclass(frozen=True)
class Accel:
    kind: str  # KVM or TCG; a backend maps it to its own setting (libvirt: <domain type="kvm|qemu">)
    reason: str
    doubtful: bool = False  # chosen against what the host reports: say so

    @property
    def emulated(self) -> bool:
        return self.kind == TCG


def read_host_facts(sys_module: Path = Path("/sys/module"), dev_kvm: Path = Path("/dev/kvm")) -> HostFacts:
    names = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
    modules = frozenset(name for name in names if (sys_module / name).exists())
    return HostFacts(dev_kvm.exists() and os.access(dev_kvm, os.R_OK | os.W_OK), modules)


def choose_accel(requested: str, facts: HostFacts) -> Accel:
    """Resolve ``accel: auto|kvm|tcg`` against the host."""
    if not facts.emulation:
        return _hardware_only(requested, facts)
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


HARDWARE_FIX = ("enable VT-x/AMD-V in the firmware (or nested virtualisation for a VM host); or, where the "
                "hypervisor reaches it in a way it does not report (VirtualBox over Hyper-V), set accel: kvm")


def _hardware_only(requested: str, facts: HostFacts) -> Accel:
    """A hypervisor without software emulation: hardware virtualization (``auto``, ``kvm``), never TCG.
    ``kvm`` goes ahead where the hypervisor reports no VT-x/AMD-V (it may reach it through Hyper-V on
    Windows without saying so); ``auto`` refuses."""
    if requested == "tcg":
        raise ConfigError("accel", "tcg is QEMU's software emulation, which this hypervisor does not have; "
                          "use auto or kvm")
    if facts.hardware:
        return Accel(KVM, "hardware virtualization (VT-x/AMD-V)")
    if requested == "kvm":
        return Accel(KVM, "hardware virtualization requested (accel: kvm), though the hypervisor reports no "
                          "VT-x/AMD-V: nodes may fail to start", doubtful=True)
    raise ConfigError("accel", "the hypervisor reports no hardware virtualization (VT-x/AMD-V) and has no "
                      "software emulation", HARDWARE_FIX)
