"""kcli (from PyPI, in a venv of its own: `make bench-deps`) pointed at the run's private libvirtd.

Its home is a directory of the run's own (``$HOME/.kcli/config.yml`` names the daemon's URI, its pool
and network; ``$HOME/.ssh/id_ed25519.pub`` is the key it puts into its cloud-init seed). The lab's
image, kernel and initrd are copied into kcli's pool untimed, as a kcli user would have them.

One gap is bridged by hand, and timed with kcli: kcli's kvm provider has no direct kernel boot (its
``kernel``/``initrd`` keywords are documented but unused by ``create``), while the image labctl's
builder makes boots only that way (it has no bootloader). So the plan is created with
``start: false``; then each domain gets the image's kernel, initrd and command line (plus
``net.ifnames=0``: kcli's seed configures ``eth0``) through libvirt, and is started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import libvirt
import yaml

from benchmarks.measure import REPO

KCLI = Path(os.environ.get("LABCTL_BENCH_KCLI", REPO / "build" / "kcli-venv" / "bin" / "kcli"))
POOL = "kclibench"
NETWORK = "kclibench"
NETWORK_CIDR = "192.168.213.0/24"  # exists only inside the run's network namespace
PLAN = "kb"
USER = "debian"  # the image's cloud-init default user, whom kcli's seed gives the key


class Kcli:
    def __init__(self, daemon, home: Path, image, nodes: Sequence[str], cpus: int, memory: int, disk: int) -> None:
        self.daemon, self.home, self.image, self.nodes = daemon, home, image, list(nodes)
        self.cpus, self.memory, self.disk = cpus, memory, disk
        self.pool_dir = daemon.base_dir / "kcli-pool"
        self.key = home / ".ssh" / "id_ed25519"
        self.env = {**os.environ, "HOME": str(home)}

    def version(self) -> str:
        return self.run(["version"]).stdout.strip() or "unknown"

    def run(self, args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(KCLI), *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"kcli {' '.join(args)} exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
        return done

    def prepare(self) -> None:
        """Untimed: config, key, pool with the image in it, network; the plan file."""
        (self.home / ".kcli").mkdir(parents=True, exist_ok=True)
        (self.home / ".kcli" / "config.yml").write_text(yaml.safe_dump(
            {"default": {"client": "bench"}, "bench": {"type": "kvm", "url": self.daemon.uri, "pool": POOL}}))
        self.key.parent.mkdir(mode=0o700, exist_ok=True)
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True,
                           timeout=30)
        self.pool_dir.mkdir(exist_ok=True)
        self.run(["create", "pool", "-p", str(self.pool_dir), POOL])
        self.run(["create", "network", "-c", NETWORK_CIDR, NETWORK])
        for path in (self.image.path, self.image.kernel, self.image.initrd):
            shutil.copyfile(path, self.pool_dir / path.name)
        vm = {"image": self.image.path.name, "numcpus": self.cpus, "memory": self.memory, "disks": [self.disk],
              "nets": [NETWORK], "start": False}
        (self.home / "plan.yml").write_text(yaml.safe_dump({name: vm for name in self.nodes}))

    def create(self) -> None:
        """The timed command: `kcli create plan`, then the direct-boot settings and the starts."""
        self.run(["create", "plan", "-f", str(self.home / "plan.yml"), PLAN], timeout=600)
        cmdline = f"{self.image.cmdline} net.ifnames=0"
        conn = libvirt.open(self.daemon.uri)
        try:
            for name in self.nodes:
                root = ET.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                boot = root.find("os")
                assert boot is not None
                for tag, text in (("kernel", self.pool_dir / self.image.kernel.name),
                                  ("initrd", self.pool_dir / self.image.initrd.name), ("cmdline", cmdline)):
                    ET.SubElement(boot, tag).text = str(text)
                conn.defineXML(ET.tostring(root, encoding="unicode")).create()
        finally:
            conn.close()

    def addresses(self) -> dict[str, str]:
        """Node -> the IPv4 address its DHCP lease gave it (so far; none before kcli defined it)."""
        conn = libvirt.open(self.daemon.uri)
        try:
            leases = conn.networkLookupByName(NETWORK).DHCPLeases()
            macs = {}
            for domain in conn.listAllDomains(0):
                mac = ET.fromstring(domain.XMLDesc(0)).find("devices/interface/mac")
                if domain.name() in self.nodes and mac is not None:
                    macs[mac.get("address")] = domain.name()
        except libvirt.libvirtError:  # a domain defined or redefined while we looked: next time
            return {}
        finally:
            conn.close()
        return {macs[lease["mac"]]: lease["ipaddr"] for lease in leases if lease.get("mac") in macs}

    def delete(self) -> None:
        self.run(["delete", "plan", PLAN, "-y"], timeout=300)
