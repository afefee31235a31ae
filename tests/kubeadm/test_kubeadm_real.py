"""The real kubeadm, built from source (tests/kubeadm), checks what labctl renders for kubeadm.

kubeadm and the pin helper are built on first use and cached under $LABCTL_TEST_CACHE (minutes cold,
about a second warm: see tests/kubeadm/tooling.py). Without go these tests skip, saying why (in CI they
fail: CI has go). kubeadm runs with a temporary HOME and no network: in an empty network namespace
where the run is root, else behind a proxy address nothing listens on, so "stable-1.35" falls back to
kubeadm's own version instead of asking the internet.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from labctl.guest.cloudconfig import role_config
from labctl.guest.roles import KUBEADM_CONFIG
from labctl.lab.config import parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets
from labctl.pki.x509 import ca_cert_hash
from tests.guest.manifests import with_cni
from tests.kubeadm.gomodule import HERE, KUBERNETES, PIN_PACKAGE, parse_release, required_version
from tests.kubeadm.gotool import Go
from tests.kubeadm.tooling import (
    Job,
    crictl_binary,
    ensure_binary,
    kubeadm_binary,
    or_skip,
    pin_binary,
    resolve_release,
)

pytestmark = [pytest.mark.slow, pytest.mark.kubeadm]  # part of `make test`; `make test-kubeadm` runs them alone

UNREACHABLE_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, a request fails at once


@pytest.fixture(scope="session")
def release() -> str:
    return or_skip(lambda: resolve_release(Go.find()))


@pytest.fixture(scope="session")
def kubeadm(release) -> Path:
    return or_skip(kubeadm_binary, release)


@pytest.fixture(scope="session")
def kubeadm_pin(release) -> Path:
    return or_skip(pin_binary, release)


@pytest.fixture(scope="module")
def lab(release, tmp_path_factory):
    """The default lab at kubeadm's own minor, with its secrets: (plan, secrets)."""
    major, minor, _ = parse_release(release)
    plan = with_cni(plan_lab(parse_lab(f'kubernetes: {{version: "{major}.{minor}"}}\n',
                                       "default lab at kubeadm's minor")))
    return plan, ensure_secrets(LabState.for_lab(plan.lab.name, tmp_path_factory.mktemp("state")), plan)


@pytest.fixture(scope="module")
def kubeadm_configs(lab, tmp_path_factory) -> dict[str, Path]:
    """Every node's /etc/labctl/kubeadm.yaml as its seed carries it, written to files: node name -> path."""
    plan, secrets = lab
    directory = tmp_path_factory.mktemp("kubeadm-configs")
    paths = {}
    for node in plan.nodes:
        files = {entry["path"]: entry["content"] for entry in role_config(plan, node, secrets)["write_files"]}
        if KUBEADM_CONFIG in files:
            paths[node.name] = directory / f"{node.name}.yaml"
            paths[node.name].write_text(files[KUBEADM_CONFIG])
    return paths


def run_offline(argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with ``home`` as HOME, no network, a minimal environment; output captured."""
    env = {"HOME": str(home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "HTTPS_PROXY": UNREACHABLE_PROXY, "HTTP_PROXY": UNREACHABLE_PROXY, "NO_PROXY": ""}
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare:
        argv = [unshare, "--net", *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


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


def test_every_kubeadm_config_labctl_renders_validates(kubeadm, kubeadm_configs, tmp_path):
    assert sorted(kubeadm_configs) == ["master1", "master2", "master3", "worker1", "worker2"]
    for name, path in kubeadm_configs.items():
        result = run_offline([str(kubeadm), "config", "validate", "--config", str(path)], tmp_path)
        assert result.returncode == 0, f"{name}: kubeadm config validate said:\n{result.stdout}{result.stderr}"
        assert result.stdout.strip() == "ok", name


@pytest.mark.parametrize("node", ["master1", "master2", "worker1"])
def test_kubeadm_refuses_an_unknown_field(node, kubeadm, kubeadm_configs, tmp_path):
    documents = list(yaml.safe_load_all(kubeadm_configs[node].read_text()))
    documents[0]["nodeRegistration"]["notAField"] = True
    broken = tmp_path / f"{node}-unknown-field.yaml"
    broken.write_text(yaml.safe_dump_all(documents, explicit_start=True))
    result = run_offline([str(kubeadm), "config", "validate", "--config", str(broken)], tmp_path)
    assert result.returncode != 0
    assert 'unknown field "nodeRegistration.notAField"' in result.stderr


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
