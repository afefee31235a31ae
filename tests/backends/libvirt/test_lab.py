"""`labctl up`, `status` and `destroy` against a real libvirtd that this test run starts itself,
inside its own network namespace (TCG). Where that cannot run (not root), the tagging and
destroy-safety cases run against libvirt's in-process test:///default driver, and say so."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from labctl.backends.libvirt.backend import LibvirtBackend
from labctl.errors import StateError
from labctl.lab.config import parse_lab
from labctl.lab.identity import Tag
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.ops.events import QuietEvents
from labctl.ops.lifecycle import destroy, lab_id_for
from tests.harness.libvirtd import can_run
from tests.labenv import lab_env, labctl, record_figure, snapshot, write_lab

CAN_RUN, WHY = can_run()
NODES = ["gateway", "lb1", "master1", "master2", "master3", "worker1", "worker2"]



@pytest.fixture(scope="module")
def env(daemon, tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    return lab_env(daemon, work, write_lab(work))


def add_foreign_objects(conn, pool_dir):
    """Objects the lab must never touch, some with the lab's name prefix or another lab's tag."""
    conn.defineXML("<domain type='qemu'><name>k8s-foreign</name><memory unit='MiB'>64</memory>"
                   "<os><type arch='x86_64'>hvm</type></os></domain>")
    other = Tag("other", "fff", "domain", "master", "master1")
    from labctl.backends.libvirt.xml import _metadata  # the same metadata shape labctl writes

    root = ET.fromstring("<domain type='qemu'><name>k8s-master9</name><memory unit='MiB'>64</memory>"
                         "<os><type arch='x86_64'>hvm</type></os></domain>")
    root.append(_metadata(other))
    conn.defineXML(ET.tostring(root, encoding="unicode"))
    conn.networkDefineXML("<network><name>k8s-extra</name><bridge name='k8sextra0'/></network>")
    pool = conn.storagePoolLookupByName("labctl")
    for name in ("k8s-master1-foreign.qcow2", "k8s-master1.qcow2", "k8s-notes-seed.iso"):
        pool.createXML(f"<volume><name>{name}</name><capacity>1048576</capacity></volume>", 0)
    return {"domains": {"k8s-foreign", "k8s-master9"}, "networks": {"k8s-extra"},
            "volumes": {"k8s-master1-foreign.qcow2", "k8s-master1.qcow2", "k8s-notes-seed.iso"}}


@pytest.mark.libvirt
@pytest.mark.slow
def test_up_status_destroy_against_a_real_libvirtd(daemon, env):
    first = labctl(env, "up", "--no-wait")  # the blank base image never boots to `ready`
    assert first.returncode == 0, first.stderr
    assert "accelerator: " in first.stderr and "TCG" in first.stderr
    conn = libvirt.open(daemon.uri)
    try:
        state = snapshot(conn)
        domains = {name: (active, tag) for name, _, active, tag in state["domains"]}
        assert sorted(domains) == sorted(f"k8s-{n}" for n in NODES)
        assert all(active for active, _ in domains.values())
        assert {tag.node for _, tag in domains.values()} == set(NODES)
        assert all(tag.lab == "k8s" and tag.kind == "domain" for _, tag in domains.values())
        assert [(n, a) for n, _, a in state["networks"]] == [("k8s-internal", 1), ("k8s-nat", 1)]
        check_volumes(conn, state["volumes"])
        check_domain_devices(conn)
        check_render_is_what_up_defined(conn, env, daemon.base_dir / "render")

        second = labctl(env, "up", "--no-wait")
        assert second.returncode == 0, second.stderr
        assert all(line.endswith((": exists", ": running")) for line in second.stderr.splitlines()
                   if line.startswith(("base image", "network", "node", "start"))), second.stderr
        assert snapshot(conn) == state

        changed = Path(env["LABCTL_CONFIG"]).with_name("changed.yaml")
        changed.write_text(Path(env["LABCTL_CONFIG"]).read_text()
                           + "networks: {internal: {cidr: 10.150.0.0/24}}\n")
        refused = labctl({**env, "LABCTL_CONFIG": str(changed)}, "up", "--no-wait")
        assert refused.returncode == 1
        assert "cannot apply in place: networks.internal.cidr" in refused.stderr
        assert refused.stderr.count("labctl: error:") == 1 and snapshot(conn) == state

        status = labctl(env, "status", "--output", "json")
        rows = json.loads(status.stdout)
        assert [(r["name"], r["state"]) for r in rows] == [(n, "running") for n in NODES]

        # Counted from what libvirt held: the lab's tagged domains and networks, and its volumes.
        lab_before = [n for n, *_ in state["domains"] + state["networks"] if n.startswith("k8s-")]
        lab_before += [v for v in state["volumes"] if not v.startswith("labctl-base-")]
        foreign = add_foreign_objects(conn, daemon.base_dir / "pool")
        gone = labctl(env, "destroy", "--yes")
        assert gone.returncode == 0, gone.stderr
        after = snapshot(conn)
        assert {name for name, *_ in after["domains"]} == foreign["domains"]
        assert {name for name, *_ in after["networks"]} == foreign["networks"]
        base = [v for v in after["volumes"] if v.startswith("labctl-base-")]
        assert set(after["volumes"]) - set(base) == foreign["volumes"]
        assert len(base) == 2, "the shared base image (and its marker) stays"

        kept = foreign["domains"] | foreign["networks"] | foreign["volumes"] | set(base)
        lab_left = [n for n, *_ in after["domains"] + after["networks"] if n not in kept]
        lab_left += [v for v in after["volumes"] if v not in kept]
        record_figure("destroy_safety", {
            "foreign_objects": sum(map(len, foreign.values())),
            "foreign_survived": len(foreign["domains"] & {n for n, *_ in after["domains"]})
            + len(foreign["networks"] & {n for n, *_ in after["networks"]})
            + len(foreign["volumes"] & set(after["volumes"])),
            "lab_objects_before": len(lab_before),
            "lab_objects_left": len(lab_left),
        })
        assert lab_left == []

        again = labctl(env, "destroy", "--yes")
        assert again.returncode == 0 and "nothing to remove" in again.stderr
    finally:
        conn.close()


def check_volumes(conn, volumes):
    """One overlay and one seed per node, the overlays backed by the shared base (not copies)."""
    pool = conn.storagePoolLookupByName("labctl")
    overlays = [v for v in volumes if v.startswith("k8s-") and v.endswith(".qcow2")]
    seeds = [v for v in volumes if v.endswith("-seed.iso")]
    assert len(overlays) == len(NODES) and len(seeds) == len(NODES)
    base = pool.storageVolLookupByName(next(v for v in volumes if v.startswith("labctl-base-") and
                                            v.endswith(".qcow2")))
    for name in overlays:
        vol = pool.storageVolLookupByName(name)
        root = ET.fromstring(vol.XMLDesc(0))
        assert root.findtext("backingStore/path") == base.path()
        assert vol.info()[2] < 4 << 20, "an overlay, not a copy of the base"


def missing_from(rendered: ET.Element, defined: ET.Element, where: str = "") -> list[str]:
    """What ``rendered`` says that ``defined`` (libvirt's normalized definition, which adds defaults,
    addresses and controllers) does not: every element with its attributes and text, in order per tag."""
    problems = []
    if rendered.attrib.items() - defined.attrib.items():
        problems.append(f"{where}/{rendered.tag} {dict(rendered.attrib)} vs {dict(defined.attrib)}")
    if (rendered.text or "").strip() != (defined.text or "").strip() and (rendered.text or "").strip():
        problems.append(f"{where}/{rendered.tag} text {rendered.text!r} vs {defined.text!r}")
    for tag in dict.fromkeys(child.tag for child in rendered):
        mine, theirs = rendered.findall(tag), defined.findall(tag)
        if len(theirs) < len(mine):
            problems.append(f"{where}/{rendered.tag}: {len(mine)} <{tag}>, libvirt has {len(theirs)}")
            continue
        for ours, held in zip(mine, theirs, strict=False):
            problems += missing_from(ours, held, f"{where}/{rendered.tag}")
    return problems


def canonical(domain: ET.Element, held: ET.Element) -> ET.Element:
    """A rendered domain as libvirt normalizes it on define: memory in KiB, the machine alias `pc`
    resolved to the versioned i440fx machine it stands for."""
    for memory in domain.findall("memory"):
        if memory.get("unit") == "MiB":
            memory.set("unit", "KiB")
            memory.text = str(int(memory.text or "0") * 1024)
    ours, theirs = domain.find("os/type"), held.find("os/type")
    if ours is not None and theirs is not None and ours.get("machine") == "pc" and \
            (theirs.get("machine") or "").startswith("pc-i440fx-"):
        ours.set("machine", theirs.get("machine", ""))
    return domain


def check_render_is_what_up_defined(conn, env, out):
    """`labctl render` of the lab `up` made: its domain and network XML is what libvirt holds."""
    rendered = labctl(env, "render", str(out))
    assert rendered.returncode == 0, rendered.stderr
    assert "throwaway" not in rendered.stderr  # the lab exists: its own id and secrets
    for node in NODES:
        held = ET.fromstring(conn.lookupByName(f"k8s-{node}").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        problems = missing_from(canonical(ET.parse(out / node / "domain.xml").getroot(), held), held)
        assert problems == [], "\n".join(problems)
    for name in ("k8s-nat", "k8s-internal"):
        held = ET.fromstring(conn.networkLookupByName(name).XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE))
        assert missing_from(ET.parse(out / "networks" / f"{name}.xml").getroot(), held) == [], name


def check_domain_devices(conn):
    root = ET.fromstring(conn.lookupByName("k8s-gateway").XMLDesc(0))
    assert root.get("type") == "qemu"
    targets = [(d.find("target").get("dev"), d.find("target").get("bus")) for d in root.findall("devices/disk")]
    assert targets == [("vda", "virtio"), ("vdb", "virtio")]
    assert [i.find("source").get("network") for i in root.findall("devices/interface")] == ["k8s-nat", "k8s-internal"]


# --- the fallback: libvirt's in-process test driver --------------------------------------------


@pytest.fixture
def test_driver():
    if CAN_RUN:
        print("private libvirtd available; test:///default cases run as a fast complement")
    else:
        print(f"NOTE: no private libvirtd ({WHY}); falling back to libvirt's test:///default driver")
    conn = libvirt.open("test:///default")
    yield LibvirtBackend(conn, pool_dir="/default-pool", console_dir="/tmp")
    conn.close()


def test_networks_tagging_and_destroy_safety_on_the_test_driver(test_driver, tmp_path):
    backend = test_driver
    plan = plan_lab(parse_lab("name: k8s", "t"))
    state = LabState.for_lab("k8s", tmp_path)
    lab_id = lab_id_for(plan, backend, state)
    for net in plan.networks:
        assert backend.ensure_network(net, Tag("k8s", lab_id, "network")) == "created"
        assert backend.ensure_network(net, Tag("k8s", lab_id, "network")) == "exists"
    backend.conn.networkDefineXML("<network><name>k8s-lookalike</name><bridge name='k8slook0'/></network>")
    assert backend.find_lab_ids("k8s") == {lab_id}
    # Objects without their state directory: refused in one line naming both, nothing made (no new secrets).
    with pytest.raises(StateError, match=rf"lab k8s: test:///default holds its objects \(lab id {lab_id}\) but its "
                                         r"state directory \S+/lost/k8s is missing"):
        lab_id_for(plan, backend, LabState.for_lab("k8s", tmp_path / "lost"))
    assert not (tmp_path / "lost").exists()
    other = LabState.for_lab("k8s", tmp_path / "other")
    other.save_record({"name": "k8s", "id": "0000000000ff"})
    with pytest.raises(StateError, match=rf"holds objects of lab id {lab_id} but the state directory \S+ is of "
                                         r"lab id 0000000000ff"):
        lab_id_for(plan, backend, other)
    removed = destroy("k8s", backend, state, QuietEvents())
    assert sorted(obj.name for obj in removed) == ["k8s-internal", "k8s-nat"]
    names = {n.name() for n in backend.conn.listAllNetworks()}
    assert "k8s-lookalike" in names and "k8s-nat" not in names
    assert destroy("k8s", backend, state, QuietEvents()) == []


def test_foreign_network_with_the_lab_name_is_refused(test_driver):
    backend = test_driver
    plan = plan_lab(parse_lab("name: k8s", "t"))
    backend.conn.networkDefineXML("<network><name>k8s-nat</name><bridge name='k8snat0'/></network>")
    from labctl.errors import BackendError

    with pytest.raises(BackendError, match=r"network k8s-nat exists but is not part of lab k8s"):
        backend.ensure_network(plan.network("nat"), Tag("k8s", "abc", "network"))
