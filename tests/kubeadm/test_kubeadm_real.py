"""The real kubeadm, built from source (tests/kubeadm), checks what labctl renders for kubeadm.

kubeadm and the pin helper are built on first use and cached under $LABCTL_TEST_CACHE (minutes cold,
about a second warm: see tests/kubeadm/tooling.py). Without go these tests skip, saying why (in CI they
fail: CI has go). kubeadm runs with a temporary HOME and no network (tests/kubeadm/labs.py), so
"stable-1.35" falls back to kubeadm's own version instead of asking the internet. Every check runs for
every lab shape and minor of tests/kubeadm/labs.py (the fixtures are in conftest.py).
"""

import subprocess
from pathlib import Path

import pytest
import yaml

from labctl.pki.x509 import ca_cert_hash
from tests.kubeadm.gomodule import HERE, KUBERNETES, PIN_PACKAGE, parse_release, required_version
from tests.kubeadm.gotool import Go
from tests.kubeadm.labs import run_offline
from tests.kubeadm.tooling import Job, crictl_binary, ensure_binary, or_skip, resolve_release

pytestmark = [pytest.mark.slow, pytest.mark.kubeadm]  # part of `make test`; `make test-kubeadm` runs them alone


def one_node_per_kind(plan, configs: dict[str, Path]) -> list[str]:
    """The first node of each kind of kubeadm configuration: init, control-plane join, worker join."""
    kinds: dict[str, str] = {}
    for name in configs:
        node = plan.node(name)
        kind = "init" if node.role == "master" and node.index == 1 else f"{node.role} join"
        kinds.setdefault(kind, name)
    return list(kinds.values())


def test_kubeadm_is_the_release(kubeadm, release, tmp_path):
    result = run_offline([str(kubeadm), "version", "-o", "short"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == release


def test_make_kubeadm_prints_the_cached_binary_last(kubeadm, release):
    # What `make kubeadm` runs; warm, it only checks the cache.
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(["python3", "-m", "tests.kubeadm.build", "kubeadm", release], cwd=root,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(kubeadm)


def test_a_minor_resolves_offline_to_the_newest_known_release(kubeadm, release, monkeypatch):
    monkeypatch.setenv("GOPROXY", "off")
    # The newest of the pinned release and those built (the kubeadm fixture built this one).
    assert resolve_release(Go.find(), release.rsplit(".", 1)[0]) == release
    assert parse_release(required_version(Go.find(), HERE, KUBERNETES)) <= parse_release(release)


def test_a_changed_input_rebuilds_and_an_unchanged_one_does_not(kubeadm_pin, tmp_path):
    go = Go.find()
    job = Job("kubeadm-pin", PIN_PACKAGE, HERE, tmp_path, ("-trimpath",))
    built = ensure_binary(go, job)
    first = built.stat()
    assert ensure_binary(go, job).stat().st_ino == first.st_ino  # cached: not even replaced
    stripped = Job("kubeadm-pin", PIN_PACKAGE, HERE, tmp_path, ("-trimpath", "-ldflags", "-s -w"))
    assert ensure_binary(go, stripped).stat().st_ino != first.st_ino
    assert built.stat().st_size < first.st_size
    assert sorted(path.name for path in tmp_path.iterdir()) == [".kubeadm-pin.stamp", ".lock", "kubeadm-pin"]


def test_crictl_is_the_pinned_cri_tools():
    crictl = or_skip(crictl_binary)
    version = required_version(Go.find(), HERE / "crictl", "sigs.k8s.io/cri-tools")
    result = subprocess.run([str(crictl), "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == f"crictl version {version.removeprefix('v')}"


def test_every_kubeadm_config_labctl_renders_validates(kubeadm, lab, kubeadm_configs, tmp_path):
    plan, _ = lab
    assert {node.name for node in plan.nodes if node.role in ("master", "worker")} <= set(kubeadm_configs)
    for name, path in kubeadm_configs.items():
        result = run_offline([str(kubeadm), "config", "validate", "--config", str(path)], tmp_path)
        assert result.returncode == 0, f"{name}: kubeadm config validate said:\n{result.stdout}{result.stderr}"
        assert result.stdout.strip() == "ok", name


def test_kubeadm_refuses_an_unknown_field(kubeadm, lab, kubeadm_configs, tmp_path):
    plan, _ = lab
    for node in one_node_per_kind(plan, kubeadm_configs):
        documents = list(yaml.safe_load_all(kubeadm_configs[node].read_text()))
        documents[0]["nodeRegistration"]["notAField"] = True
        broken = tmp_path / f"{node}-unknown-field.yaml"
        broken.write_text(yaml.safe_dump_all(documents, explicit_start=True))
        result = run_offline([str(kubeadm), "config", "validate", "--config", str(broken)], tmp_path)
        assert result.returncode != 0, node
        assert 'unknown field "nodeRegistration.notAField"' in result.stderr, node


@pytest.mark.parametrize("node", ["master1", "worker1"])
def test_kubeadm_refuses_a_malformed_bootstrap_token(node, kubeadm, kubeadm_configs, lab, tmp_path):
    _, secrets = lab
    text = kubeadm_configs[node].read_text()
    assert secrets.bootstrap_token in text
    broken = tmp_path / f"{node}-bad-token.yaml"
    broken.write_text(text.replace(secrets.bootstrap_token, secrets.bootstrap_token.upper()))
    result = run_offline([str(kubeadm), "config", "validate", "--config", str(broken)], tmp_path)
    assert result.returncode != 0
    assert secrets.bootstrap_token.upper() in result.stderr


def test_ca_cert_hash_is_kubeadms_pin(kubeadm_pin, lab, kubeadm_configs, tmp_path):
    _, secrets = lab
    ca = tmp_path / "ca.crt"
    ca.write_text(secrets.kubernetes_ca.cert_pem)
    pinned = subprocess.run([str(kubeadm_pin), str(ca)], capture_output=True, text=True, timeout=60, check=True)
    assert pinned.stdout.splitlines() == [ca_cert_hash(secrets.kubernetes_ca.cert_pem)]
    assert secrets.ca_cert_hash == ca_cert_hash(secrets.kubernetes_ca.cert_pem)
    for name, path in kubeadm_configs.items():
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] == "JoinConfiguration":
                assert document["discovery"]["bootstrapToken"]["caCertHashes"] == pinned.stdout.split(), name


def test_kubeadm_discovery_accepts_labctls_hash_and_no_other(kubeadm_pin, lab, tmp_path):
    _, secrets = lab
    ca = tmp_path / "ca.crt"
    ca.write_text(secrets.kubernetes_ca.cert_pem)
    check = [str(kubeadm_pin), "-check"]
    accepted = subprocess.run([*check, secrets.ca_cert_hash, str(ca)], capture_output=True, text=True, timeout=60)
    assert accepted.returncode == 0, accepted.stderr
    other = ca_cert_hash(secrets.front_proxy_ca.cert_pem)
    refused = subprocess.run([*check, other, str(ca)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "none of the public keys" in refused.stderr
    # kubeadm config validate leaves caCertHashes alone; join parses them as this does.
    malformed = subprocess.run([*check, secrets.ca_cert_hash[:-2], str(ca)], capture_output=True, text=True,
                               timeout=60)
    assert malformed.returncode == 1
    assert "expected a 32 byte SHA-256 hash" in malformed.stderr
