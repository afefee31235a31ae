"""The lab model: the default, valid variations, and invalid inputs each with its exact message."""

from ipaddress import IPv4Network

import pytest

from labctl.errors import ConfigError
from labctl.lab.config import derived_cidrs, load_lab, parse_lab
from labctl.lab.model import RoleSpec
from labctl.lab.plan import plan_lab


def test_default_lab_has_the_documented_topology():
    lab = load_lab()
    assert lab.name == "k8s"
    assert lab.domain == "k8s.internal"
    assert [(r.role, r.count) for r in lab.roles] == [("gateway", 1), ("lb", 1), ("etcd", 0), ("master", 3),
                                                      ("worker", 2)]
    master = lab.role("master")
    assert master.cpus >= 2 and master.memory >= 2048
    assert lab.internal.mode == "isolated" and lab.internal.bridge is None
    assert (lab.nat.cidr, lab.internal.cidr) == derived_cidrs("k8s")
    assert lab.kubernetes.pod_cidr == IPv4Network("10.244.0.0/16")
    assert lab.image.name == "debian-13-genericcloud-amd64" and lab.image.checksums_url


def test_partial_file_keeps_defaults_and_name_override_wins():
    lab = parse_lab("nodes:\n  worker:\n    count: 0\n", "t", name="other")
    assert lab.name == "other" and lab.domain == "other.internal"
    assert lab.role("worker").count == 0
    assert lab.role("master").count == 3
    assert (lab.nat.cidr, lab.internal.cidr) == derived_cidrs("other")
    assert derived_cidrs("other") != derived_cidrs("k8s")


def test_bridge_mode_and_explicit_cidrs():
    text = """
networks:
  nat: {cidr: 192.168.150.0/24}
  internal: {mode: bridge, bridge: br0, cidr: 192.168.1.0/24}
nodes: {lb: {count: 2}, master: {count: 5}}
"""
    lab = parse_lab(text, "t")
    assert lab.internal.mode == "bridge" and lab.internal.bridge == "br0"
    assert lab.role("lb").count == 2 and lab.role("master").count == 5


def test_virtualbox_modes_and_host_interface_names():
    intnet = parse_lab("backend: virtualbox\nnetworks: {internal: {mode: intnet}}", "t")
    assert (intnet.backend, intnet.internal.mode, intnet.internal.bridge) == ("virtualbox", "intnet", None)
    windows = "Intel(R) Ethernet Connection (7) I219-V"  # VirtualBox bridges onto host interfaces by their names
    bridged = parse_lab(f"backend: virtualbox\nnetworks: {{internal: {{mode: bridge, bridge: '{windows}'}}}}", "t")
    assert bridged.internal.bridge == windows


def test_the_backend_override_is_validated_with_the_file():
    """--backend reaches validation: a setting that is one backend's is refused under the other."""
    text = "backend: virtualbox\nnetworks: {internal: {mode: intnet}}"
    assert parse_lab(text, "t", backend="virtualbox").backend == "virtualbox"
    with pytest.raises(ConfigError, match=r"^networks\.internal\.mode: intnet is VirtualBox's"):
        parse_lab(text, "t", backend="libvirt")
    assert parse_lab("accel: tcg", "t").accel == "tcg"
    with pytest.raises(ConfigError, match=r"^accel: tcg is QEMU's software emulation"):
        parse_lab("accel: tcg", "t", backend="virtualbox")


def test_relaxed_minimums_allow_small_masters():
    lab = parse_lab("kubernetes: {enforce_minimums: false}\nnodes: {master: {cpus: 1, memory: 768}}\n", "t")
    assert lab.role("master").memory == 768


INVALID = [
    ("nodes:\n  worker:\n    memory: 2G\n", 'nodes.worker.memory: expected MiB ≥ 512, got "2G"'),
    ("nodes: {worker: {memory: 100}}", "nodes.worker.memory: expected MiB ≥ 512, got 100"),
    ("nodes: {worker: {memory: 99999999}}", "nodes.worker.memory: expected MiB ≤ 262144, got 99999999"),
    ("nodes: {worker: {cpus: true}}", "nodes.worker.cpus: expected vCPUs ≥ 1, got true"),
    ("nodes: {master: {count: 2}}", "nodes.master.count: expected 1, 3, 5 or 7, got 2: etcd needs a majority"),
    ("nodes: {master: {count: 4}}", "nodes.master.count: expected 1, 3, 5 or 7, got 4"),
    ("nodes: {master: {count: 9}}", "nodes.master.count: expected an integer 1–7, got 9"),
    ("nodes: {lb: {count: 3}}", "nodes.lb.count: expected an integer 1–2, got 3"),
    ("nodes: {lb: {count: 0}}", "nodes.lb.count: expected an integer 1–2, got 0"),
    ("nodes: {worker: {count: -1}}", "nodes.worker.count: expected an integer 0–50, got -1"),
    ("nodes: {etcd: {count: 3}}", "nodes.etcd: etcd nodes need kubernetes.etcd: external"),
    ("nodes: {etcd: {}}", "nodes.etcd: etcd nodes need kubernetes.etcd: external"),
    ("kubernetes: {etcd: external}\nnodes: {etcd: {count: 4}}",
     "nodes.etcd.count: expected 3, 5 or 7, got 4: a quorum is a majority"),
    ("kubernetes: {etcd: external}\nnodes: {etcd: {count: 1}}", "nodes.etcd.count: expected an integer 3–7, got 1"),
    ("kubernetes: {etcd: external}\nnodes: {etcd: {memory: 256}}", "nodes.etcd.memory: expected MiB ≥ 512, got 256"),
    ("kubernetes: {etcd: external}\nnodes: {etcd: {size: 3}}", "nodes.etcd.size: unknown key"),
    ("kubernetes: {etcd: extrnal}", 'kubernetes.etcd: expected one of stacked, external, got "extrnal"'),
    ("nodes: {gateway: {count: 2}}", "nodes.gateway.count: unknown key; valid keys: cpus, memory, disk"),
    ("nodes: {master: {cpus: 1}}", "nodes.master.cpus: expected vCPUs ≥ 2, got 1"),
    ("nodes: {master: {memory: 1024}}", "nodes.master.memory: expected MiB ≥ 1700, got 1024"),
    ("nodes: {wroker: {count: 1}}", "nodes.wroker: unknown key; did you mean `worker`?"),
    ("nodes: {worker: {dsik: 10}}", "nodes.worker.dsik: unknown key; did you mean `disk`?"),
    ("nodes: [1, 2]", "nodes: expected a mapping, got a list"),
    ("naem: x", "naem: unknown key; did you mean `name`?"),
    ("name: K8S", "name: expected a DNS-1123 label"),
    ("name: -k8s", "name: expected a DNS-1123 label"),
    ("name: averyveryverylonglabname", "name: expected a DNS-1123 label of ≤ 20 chars"),
    ("name: 42", "name: expected a DNS-1123 label"),
    ("domain: 'bad domain'", 'domain: expected a DNS domain such as k8s.internal, got "bad domain"'),
    ("user: root", "user: must not be root"),
    ("user: 'Bad User'", "user: expected a POSIX user name"),
    ("accel: fast", 'accel: expected one of auto, kvm, tcg, got "fast"'),
    ("networks: {nat: {cidr: 10.0.0.300/24}}", "networks.nat.cidr: expected an IPv4 CIDR such as 10.1.0.0/24"),
    ("networks: {nat: {cidr: 10.0.0.1/24}}", "networks.nat.cidr: expected an IPv4 CIDR"),
    ("networks: {internal: {cidr: 10.0.0.0/28}}", "networks.internal.cidr: expected a prefix length from /16 to /24"),
    ("networks: {nat: {cidr: 8.8.8.0/24}}", "networks.nat.cidr: expected a private range"),
    ("networks: {nat: {cidr: 10.1.0.0/24}, internal: {cidr: 10.1.0.0/24}}",
     "networks.internal.cidr: 10.1.0.0/24 overlaps networks.nat.cidr (10.1.0.0/24)"),
    ("networks: {internal: {cidr: 10.244.1.0/24}}",
     "kubernetes.pod_cidr: 10.244.0.0/16 overlaps networks.internal.cidr (10.244.1.0/24)"),
    ("kubernetes: {service_cidr: 10.244.0.0/12}", "kubernetes.service_cidr: expected an IPv4 CIDR"),
    ("kubernetes: {service_cidr: 10.240.0.0/12}",
     "kubernetes.service_cidr: 10.240.0.0/12 overlaps kubernetes.pod_cidr (10.244.0.0/16)"),
    ("networks: {internal: {mode: bridge}}", "networks.internal.bridge: expected the name of an existing host bridge"),
    ("networks: {internal: {bridge: br0}}", "networks.internal.bridge: only valid with mode: bridge"),
    ("networks: {internal: {mode: nat}}",
     'networks.internal.mode: expected one of isolated, bridge, intnet, got "nat"'),
    ("networks: {internal: {mode: intnet}}",
     "networks.internal.mode: intnet is VirtualBox's internal network; with backend libvirt use isolated or bridge"),
    ("backend: virtualbox\naccel: tcg", "accel: tcg is QEMU's software emulation, which VirtualBox does not have"),
    ("backend: virtualbox\nnetworks: {internal: {mode: bridge, bridge: ' en0'}}",
     "networks.internal.bridge: expected the name of a host interface for mode bridge"),
    ("backend: hyperv", 'backend: expected one of libvirt, virtualbox, got "hyperv"'),
    ("networks: {dmz: {}}", "networks.dmz: unknown key; valid keys: nat, internal"),
    ("kubernetes: {version: 1.31}", 'kubernetes.version: expected a quoted version such as "1.35", got 1.31'),
    ("kubernetes: {version: latest}", "kubernetes.version: expected a Kubernetes version"),
    ("kubernetes: {cni: weave}", 'kubernetes.cni: expected one of flannel, calico, got "weave"'),
    ("kubernetes: {enforce_minimums: yes please}", "kubernetes.enforce_minimums: expected true or false"),
    ("image: 7", "image: expected a catalog name or a mapping with url or path, got 7"),
    ("apt_mirror: ftp://x", "apt_mirror: expected an http(s) URL of letters, digits and ._:/,@=- only"),
    ("apt_mirror: {url: 'http://h/~me/debian'}", "apt_mirror.url: expected an http(s) URL of letters, digits"),
    ("", "t: empty file; run `labctl init`"),
    ("# only a comment\n", "t: empty file"),
    ("- a\n- b\n", "t: expected a mapping of settings, got a list"),
    ("just a string", "t: expected a mapping of settings, got str"),
    ("name: [unclosed", "t: YAML syntax error at line 1"),
    ("nodes:\n  master: {}\n  master: {}\n", "t: YAML syntax error at line 3, column 3: duplicate key 'master'"),
    ("name: a\x00b", "t: contains NUL bytes"),
    ("x: !!python/object:os.system {}", "t: YAML syntax error"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[f"{m.split(':')[0]}-{i}" for i, (_, m) in
                                                             enumerate(INVALID)])
def test_invalid_input_gives_one_line_naming_the_field(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_lab(text, "t")
    shown = str(caught.value)
    assert shown.startswith(message), shown
    assert "\n" not in shown


def test_unreadable_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read"):
        load_lab(tmp_path / "missing.yaml")
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"garbage.yaml: not UTF-8 text"):
        load_lab(garbage)
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match=r"larger than 1 MiB"):
        load_lab(huge)


def test_external_etcd_gets_three_members_by_default_booted_before_the_masters():
    lab = parse_lab("kubernetes: {etcd: external}", "t")
    assert lab.kubernetes.etcd == "external"
    assert lab.role("etcd") == RoleSpec("etcd", 3, 1, 1024, 8)
    plan = plan_lab(lab)
    names = list(plan.node_names)
    assert names[:6] == ["gateway", "lb1", "etcd1", "etcd2", "etcd3", "master1"]
    assert [str(node.internal.address.ip).rsplit(".", 1)[1] for node in plan.nodes_of("etcd")] == ["101", "102", "103"]
    assert plan.node("etcd2").fqdn == "etcd2.k8s.internal"


def test_the_largest_lab_has_no_address_twice():
    plan = plan_lab(parse_lab("kubernetes: {etcd: external}\nnodes: {master: {count: 7}, worker: {count: 50}, "
                              "etcd: {count: 7}, lb: {count: 2}}", "t"))
    addresses = [node.internal.address.ip for node in plan.nodes] + [plan.api_address]
    assert len(addresses) == len(set(addresses)) == 1 + 2 + 7 + 7 + 50 + 1  # and the VIP
