"""The contract every backend passes: the same tests, parametrized over every backend.

- ``fake``: the in-memory backend of the unit tests (tests/backends/fake.py);
- ``libvirt-test``: libvirt's in-process test:///default driver (it cannot upload volumes, so it runs
  the network and inventory part of the contract only);
- ``libvirt``: a real libvirtd in a private network namespace (root; TCG);
- ``virtualbox``: the real VBoxManage in its chroot (no kernel driver here: everything but starting a VM;
  its lab's internal network is an ``intnet``, as a host-only interface cannot be made without the driver).

A new backend proves itself by joining the lists below.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl.backends.base import Backend, BaseImage, NodeRequest
from labctl.errors import BackendError
from labctl.guest.seed import build_seed_iso
from labctl.lab.accel import TCG, Accel
from labctl.lab.config import parse_lab
from labctl.lab.identity import network_tag, node_tag
from labctl.lab.plan import Plan, plan_lab
from labctl.lab.state import LabState
from labctl.ops.events import QuietEvents
from labctl.ops.lifecycle import destroy, status
from tests.backends.fake import FakeBackend
from tests.labenv import blank_image

LAB = "ct"
LAB_ID = "c0ffee000001"
ACCEL = Accel(TCG, "contract")


@dataclass
class Subject:
    name: str  # the backend's, as in ALL
    backend: Backend
    plan: Plan
    image: BaseImage
    work: Path


# The internal network's mode where the default (isolated) cannot be made here: VirtualBox cannot create
# a host-only interface without its kernel driver, so its lab uses an internal network.
INTERNAL_MODE = {"virtualbox": "intnet"}


def small_plan(image: Path, lab: str = LAB, subnet: int = 1, backend: str = "fake") -> Plan:
    """gateway, lb1 and master1 of ``lab``, on 10.231.<2·subnet>.0/24 (NAT) and the /24 after it."""
    mode = INTERNAL_MODE.get(backend, "isolated")
    return plan_lab(parse_lab(f"name: {lab}\nimage: {{path: {image}}}\n"
                              "kubernetes: {enforce_minimums: false}\n"
                              f"networks: {{nat: {{cidr: 10.231.{2 * subnet}.0/24}}, "
                              f"internal: {{cidr: 10.231.{2 * subnet + 1}.0/24, mode: {mode}}}}}\n"
                              "nodes: {master: {count: 1, cpus: 1, memory: 512}, worker: {count: 0}}", "contract",
                              backend="virtualbox" if backend == "virtualbox" else None))


def base_image(work: Path) -> BaseImage:
    path, digest = blank_image(work)
    return BaseImage(path, f"sha256:{digest}", "qcow2")


def fake_backend(request: pytest.FixtureRequest, work: Path) -> Backend:
    return FakeBackend(console_dir=work)


def libvirt_test_driver(request: pytest.FixtureRequest, work: Path) -> Backend:
    import libvirt

    from labctl.backends.libvirt.backend import LibvirtBackend

    return LibvirtBackend(libvirt.open("test:///default"), pool_dir=str(work / "pool"), console_dir=str(work))


def libvirt_private(request: pytest.FixtureRequest, work: Path) -> Backend:
    from labctl.backends.libvirt.backend import LibvirtBackend

    daemon = request.getfixturevalue("daemon")
    (daemon.base_dir / "console").mkdir(exist_ok=True)
    backend = LibvirtBackend.open(daemon.uri)
    backend.pool_dir, backend.console_dir = str(daemon.base_dir / "pool"), str(daemon.base_dir / "console")
    return backend


def virtualbox(request: pytest.FixtureRequest, work: Path) -> Backend:
    from labctl.backends.virtualbox.backend import VirtualBoxBackend
    from labctl.backends.virtualbox.vboxmanage import VBoxManage

    manage = VBoxManage(request.getfixturevalue("vbox").run)
    return VirtualBoxBackend(manage, manage.check_version(), root=work / "vms")


def work_dir(request: pytest.FixtureRequest, name: str, tmp_path: Path) -> Path:
    """Where the subject's files go: for VirtualBox inside its harness, whose VBoxManage sees only that."""
    if name != "virtualbox":
        return tmp_path
    work = request.getfixturevalue("vbox").work / f"contract-{tmp_path.name}"
    work.mkdir()
    return work


Factory = Callable[[pytest.FixtureRequest, Path], Backend]
ALL: dict[str, Factory] = {"fake": fake_backend, "libvirt-test": libvirt_test_driver, "libvirt": libvirt_private,
                           "virtualbox": virtualbox}
# Backends that can hold nodes (import images and upload seeds), and those that can also run them here.
WITH_NODES = [name for name in ALL if name != "libvirt-test"]
RUNNING = ["fake", "libvirt"]


@pytest.fixture
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    work = work_dir(request, request.param, tmp_path)
    backend = ALL[request.param](request, work)
    image = base_image(work)
    plan = small_plan(image.path, backend=request.param)
    try:
        yield Subject(request.param, backend, plan, image, work)
    finally:
        destroy(LAB, backend, LabState.for_lab(LAB, work / "state"), QuietEvents())
        backend.close()


SLOW = {"virtualbox"}  # VBoxManage in its harness: a minute or more for the suite (slow, as its other tests)


def with_backends(names: list[str]) -> pytest.MarkDecorator:
    params = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]
    return pytest.mark.parametrize("subject", params, indirect=True)


# A real (tiny) ISO: VirtualBox opens what it attaches as a DVD.
SEED = build_seed_iso({"meta-data": b"instance-id: contract\n", "user-data": b"#cloud-config\n"})


def define_nodes(s: Subject) -> None:
    assert s.backend.ensure_base_image(s.image) in ("imported", "exists")
    for net in s.plan.networks:
        s.backend.ensure_network(net, network_tag(LAB, LAB_ID))
    for node in s.plan.nodes:
        tag = node_tag(LAB, LAB_ID, node.role, node.name)
        assert s.backend.ensure_node(NodeRequest(node, tag, SEED, ACCEL, s.image)) == "created"


# --- networks and inventory: every backend ---------------------------------------------------------


@with_backends(list(ALL))
def test_networks_are_created_once_tagged_and_found(subject: Subject) -> None:
    backend, plan = subject.backend, subject.plan
    for net in plan.networks:
        assert backend.ensure_network(net, network_tag(LAB, LAB_ID)) == "created"
        assert backend.ensure_network(net, network_tag(LAB, LAB_ID)) == "exists"
    assert backend.find_lab_ids(LAB) == {LAB_ID}
    found = {obj.name: obj for obj in backend.lab_objects(LAB, {LAB_ID}) if obj.kind == "network"}
    assert sorted(found) == sorted(net.name for net in plan.networks)
    assert all(obj.tag is not None and (obj.tag.lab, obj.tag.lab_id) == (LAB, LAB_ID) for obj in found.values())
    assert backend.lab_objects("other", {"feedfacecafe"}) == []


@with_backends(list(ALL))
def test_an_object_of_another_lab_under_the_labs_name_is_refused(subject: Subject) -> None:
    net = subject.plan.network("nat")
    subject.backend.ensure_network(net, network_tag("someone", "0000000000aa"))
    try:
        with pytest.raises(BackendError, match=f"{net.name} exists but is not part of lab {LAB}"):
            subject.backend.ensure_network(net, network_tag(LAB, LAB_ID))
        assert subject.backend.find_lab_ids(LAB) == set()
    finally:
        destroy("someone", subject.backend, LabState.for_lab("someone", subject.work / "state"), QuietEvents())


@with_backends(list(ALL))
def test_destroy_removes_the_labs_objects_only(subject: Subject) -> None:
    backend = subject.backend
    for net in subject.plan.networks:
        backend.ensure_network(net, network_tag(LAB, LAB_ID))
    foreign = small_plan(subject.image.path, "ctother", subnet=2, backend=subject.name).network("internal")
    backend.ensure_network(foreign, network_tag("ctother", "0000000000bb"))
    try:
        removed = destroy(LAB, backend, LabState.for_lab(LAB, subject.work / "state"), QuietEvents())
        assert sorted(obj.name for obj in removed) == sorted(net.name for net in subject.plan.networks)
        assert backend.lab_objects(LAB, {LAB_ID}) == []
        assert [obj.name for obj in backend.lab_objects("ctother", {"0000000000bb"})] == ["ctother-internal"]
    finally:
        destroy("ctother", backend, LabState.for_lab("ctother", subject.work / "state"), QuietEvents())


@with_backends(list(ALL))
def test_definitions_cover_every_network_and_node(subject: Subject) -> None:
    files = subject.backend.definitions(subject.plan, LAB_ID, ACCEL, subject.image)
    names = " ".join(files)
    assert all(net.name in names for net in subject.plan.networks)
    assert all(f"{node.name}/" in names for node in subject.plan.nodes)
    assert all(text.strip() for text in files.values())


# --- nodes: every backend that can hold them ---------------------------------------------------------


@with_backends(WITH_NODES)
def test_nodes_are_defined_once_on_a_shared_base_that_destroy_keeps(subject: Subject) -> None:
    backend, plan = subject.backend, subject.plan
    define_nodes(subject)
    assert backend.ensure_base_image(subject.image) == "exists"
    for node in plan.nodes:
        tag = node_tag(LAB, LAB_ID, node.role, node.name)
        assert backend.ensure_node(NodeRequest(node, tag, SEED, ACCEL, subject.image)) == "exists"
    objects = backend.lab_objects(LAB, {LAB_ID})
    nodes = {obj.tag.node: obj for obj in objects if obj.kind == "domain" and obj.tag}
    assert sorted(nodes) == sorted(plan.node_names)
    assert all(obj.tag and obj.tag.role == plan.node(name).role for name, obj in nodes.items())
    assert len([obj for obj in objects if obj.kind == "volume"]) >= len(plan.nodes)  # each node's disk
    rows = status(plan, backend, LabState.for_lab(LAB, subject.work / "state"))
    assert {row.name: row.state for row in rows} == dict.fromkeys(plan.node_names, "shut off")
    assert all(backend.console_argv(node) for node in plan.nodes)
    destroy(LAB, backend, LabState.for_lab(LAB, subject.work / "state"), QuietEvents())
    assert backend.lab_objects(LAB, {LAB_ID}) == []
    assert backend.ensure_base_image(subject.image) == "exists", "the shared base image outlives the lab"


@with_backends(WITH_NODES)
def test_the_seed_is_removed_once_and_then_absent(subject: Subject) -> None:
    define_nodes(subject)
    node = subject.plan.node("gateway")
    tag = node_tag(LAB, LAB_ID, node.role, node.name)
    before = len(subject.backend.lab_objects(LAB, {LAB_ID}))
    assert subject.backend.remove_seed(node, tag) == "removed"
    assert subject.backend.remove_seed(node, tag) == "absent"
    assert len(subject.backend.lab_objects(LAB, {LAB_ID})) == before - 1


# --- running nodes: where a VM can run here ----------------------------------------------------------


@with_backends(RUNNING)
def test_nodes_start_once_and_stop_bounded(subject: Subject) -> None:
    backend, node = subject.backend, subject.plan.node("gateway")
    define_nodes(subject)
    assert backend.start_node(node) == "started"
    assert backend.start_node(node) == "running"
    assert {o.name: o.state for o in backend.lab_objects(LAB, {LAB_ID})}[node.domain_name] == "running"
    # A guest idling in its firmware ignores ACPI: the stop is forced after the bound.
    assert backend.stop_node(node, 2.0, time.monotonic, time.sleep) in ("shut down", "forced off")
    assert backend.stop_node(node, 2.0, time.monotonic, time.sleep) == "stopped"
