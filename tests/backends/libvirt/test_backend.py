"""The libvirt backend's own parts that need no daemon: URIs, console, what `render` shows."""

import xml.etree.ElementTree as ET

import libvirt
import pytest

from labctl.backends.base import BaseImage, Reach
from labctl.backends.libvirt.backend import LibvirtBackend
from labctl.lab.accel import TCG, Accel


@pytest.mark.parametrize(("uri", "local", "hop"), [
    ("qemu:///system", True, None),
    ("qemu:///session", True, None),
    ("test:///default", True, None),
    ("qemu+ssh://root@hv.example/system", False, "root@hv.example"),
    ("qemu+ssh://hv:2222/system?keyfile=/k", False, "hv:2222"),
    ("qemu+tls://hv.example/system", False, None),
])
def test_uri_locality_and_hypervisor_hop(uri, local, hop):
    assert LibvirtBackend.reach(uri) == Reach(local, hop)



def test_console_is_virsh_on_the_same_uri(plan, tmp_path):
    backend = LibvirtBackend(libvirt.open("test:///default"), pool_dir=str(tmp_path / "pool"))
    try:
        assert backend.console_argv(plan.node("worker2")) == ["virsh", "-c", "test:///default", "console",
                                                               "k8s-worker2"]
    finally:
        backend.close()


def test_definitions_name_volumes_with_the_lab_id_and_boot_built_images_by_kernel(plan, tmp_path):
    backend = LibvirtBackend(libvirt.open("test:///default"), pool_dir=str(tmp_path / "pool"),
                             console_dir="/var/log/console")
    image = BaseImage(tmp_path / "i.qcow2", "sha512:" + "ab" * 64, "qcow2", tmp_path / "k", tmp_path / "i", "root=X")
    try:
        files = backend.definitions(plan, "0123456789ab", Accel(TCG, "test"), image)
    finally:
        backend.close()
    assert sorted(files) == sorted(["networks/k8s-nat.xml", "networks/k8s-internal.xml",
                                    *(f"{node.name}/domain.xml" for node in plan.nodes)])
    root = ET.fromstring(files["master1/domain.xml"])
    assert [d.find("source").get("volume") for d in root.findall("devices/disk")] == [
        "k8s-master1-0123456789ab.qcow2", "k8s-master1-0123456789ab-seed.iso"]
    assert root.findtext("os/kernel") == str(tmp_path / "pool" / ("labctl-base-sha512-" + "ab" * 12 + ".vmlinuz"))
    assert root.findtext("os/cmdline") == "root=X"
    assert root.find("devices/serial/log").get("file") == "/var/log/console/k8s-master1.console.log"
