"""The click layer: exit codes, stdout for data, stderr for messages, one-line errors."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from click.testing import CliRunner

from labctl.cli.main import cli, main
from labctl.guest.seed import read_seed_iso
from labctl.lab.config import load_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets
from tests.guest.manifests import FLANNEL


def run(args, **kwargs):
    """Run main() the way the console script does, capturing exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "labctl", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **kwargs.pop("env", {})}, **kwargs)


def test_plan_table_and_json():
    result = CliRunner().invoke(cli, ["plan"])
    assert result.exit_code == 0, result.output
    assert "master3" in result.output and "k8s-worker2" in result.output
    result = CliRunner().invoke(cli, ["plan", "--output", "json"])
    data = json.loads(result.stdout)
    assert [n["name"] for n in data["nodes"]][:2] == ["gateway", "lb1"]
    assert data["api"]["name"] == "api.k8s.internal"


def test_name_override_on_the_command_line():
    data = json.loads(CliRunner().invoke(cli, ["--name", "dev", "plan", "-o", "json"]).stdout)
    assert data["lab"] == "dev" and data["nodes"][0]["domain"] == "dev-gateway"


def test_init_writes_the_annotated_default_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "lab.yaml"
    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(target)]).exit_code == 0
    text = target.read_text()
    assert "# " in text and yaml.safe_load(text)["name"] == "k8s"
    again = run(["init", str(target)])
    assert again.returncode == 1
    assert again.stderr.strip() == f"labctl: error: {target}: already exists; use --force to overwrite"


def test_config_from_env_and_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "lab.yaml"
    bad.write_text("nodes:\n  worker:\n    memory: 2G\n")
    result = run(["plan"], env={"LABCTL_CONFIG": str(bad)})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == 'labctl: error: nodes.worker.memory: expected MiB ≥ 512, got "2G"\n'


def test_usage_errors_exit_2():
    result = run(["plan", "--output", "xml"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert run(["no-such-command"]).returncode == 2


def test_render_writes_every_artifact_and_leaves_the_state_alone(tmp_path, isolated_home):
    out = tmp_path / "out"
    config = tmp_path / "lab.yaml"
    manifest = tmp_path / "kube-flannel.yml"
    manifest.write_text(FLANNEL)
    digest = hashlib.sha256(FLANNEL.encode()).hexdigest()
    config.write_text(f"kubernetes: {{cni_manifest: {{path: {manifest}, sha256: {digest}}}}}\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "--connect", "test:///default", "render", str(out)])
    assert result.exit_code == 0, result.output
    assert "does not exist here: its secrets and id in these files are throwaway" in result.stderr
    assert not (isolated_home / "data" / "labctl").exists()
    for node in ("gateway", "lb1", "master1", "worker2"):
        for name in ("meta-data", "user-data", "network-config", "seed.iso", "domain.xml"):
            assert (out / node / name).is_file()
        files = read_seed_iso((out / node / "seed.iso").read_bytes())
        assert files["user-data"] == (out / node / "user-data").read_bytes()
    assert sorted(p.name for p in (out / "networks").iterdir()) == ["k8s-internal.xml", "k8s-nat.xml"]
    assert stat.S_IMODE((out / "master1" / "user-data").stat().st_mode) == 0o600


def test_render_works_where_libvirt_is_not_running(tmp_path, isolated_home):
    # A fresh host (or CI) without libvirtd: render says so and writes the same files with default paths.
    out = tmp_path / "out"
    down = f"qemu:///system?socket={tmp_path / 'no-libvirtd.sock'}"
    result = CliRunner().invoke(cli, ["--connect", down, "render", str(out)])
    assert result.exit_code == 0, result.output
    assert f"cannot connect to libvirt at {down}" in result.stderr
    assert "rendering with the defaults of a fresh host" in result.stderr
    # render never downloads: the default lab's CNI manifest is not cached in this fresh home
    assert "the CNI manifest is not cached: master1's seed carries a comment naming it instead" in result.stderr
    domain = ET.parse(out / "master1" / "domain.xml").getroot()
    assert domain.findtext("name") == "k8s-master1"
    assert [d.get("volume") for d in domain.iter("source") if d.get("pool") == "labctl"] == [
        "k8s-master1-000000000000.qcow2", "k8s-master1-000000000000-seed.iso"]
    assert not (isolated_home / "data" / "labctl").exists()


def test_render_of_a_remote_libvirt_that_does_not_answer_is_refused(tmp_path, isolated_home):
    result = run(["--connect", "qemu+tcp://127.0.0.1:9/system", "render", str(tmp_path / "out")])
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("labctl: error: cannot render for qemu+tcp://127.0.0.1:9/system")
    assert not (tmp_path / "out").exists()


def created_lab():
    """A lab's state as `up` leaves it: the record and the secrets."""
    state = LabState.for_lab("k8s")
    state.save_record({"name": "k8s", "id": "0123456789ab"})
    ensure_secrets(state, plan_lab(load_lab()))
    return state


def test_state_dir_and_key_are_private(isolated_home):
    state = created_lab().root
    assert state == isolated_home / "data" / "labctl" / "k8s"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "id_ed25519").stat().st_mode) == 0o600
    assert (state / "id_ed25519.pub").read_text().startswith("ssh-ed25519 ")


def test_libvirt_connection_failure_says_what_to_check(tmp_path):
    uri = f"qemu+unix:///system?socket={tmp_path}/nothing-here"
    result = run(["--connect", uri, "status"])
    assert result.returncode == 1
    assert result.stderr.startswith(f"labctl: error: cannot connect to libvirt at {uri}")
    assert "is libvirtd (or virtqemud) running" in result.stderr and result.stderr.count("\n") == 1


def test_main_turns_unexpected_errors_into_one_line(monkeypatch, capsys):
    def boom(*_args, **_kwargs):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr("labctl.cli.context.load_lab", boom)
    try:
        main(["plan"])
    except SystemExit as done:
        assert done.code == 1
    err = capsys.readouterr().err
    assert err == "labctl: error: internal error: RuntimeError: kaboom second line (rerun with --debug)\n"


def test_verbose_and_debug_are_labctls_options_only_not_words_of_a_remote_command(monkeypatch, capsys):
    from labctl.errors import LabError

    def refused(*_args, **_kwargs):
        try:
            raise ValueError("the raw cause")
        except ValueError as cause:
            raise LabError("lab.yaml unreadable") from cause

    monkeypatch.setattr("labctl.cli.context.load_lab", refused)

    def err_of(*argv):
        with pytest.raises(SystemExit):
            main(list(argv))
        return capsys.readouterr().err

    assert err_of("ssh", "master1", "--", "ls", "-v", "--debug") == "labctl: error: lab.yaml unreadable\n"
    verbose = err_of("-v", "ssh", "master1", "--", "ls")
    assert verbose.splitlines() == ["labctl: error: lab.yaml unreadable",
                                    "labctl: raw error: ValueError: the raw cause"]
    assert "Traceback" in err_of("--debug", "ssh", "master1")


def test_loose_secret_files_are_tightened_at_startup(isolated_home):
    key = created_lab().root / "id_ed25519"
    os.chmod(key, 0o644)
    os.chmod(key.parent, 0o755)  # noqa: S103 - loosened on purpose: labctl must tighten it
    assert CliRunner().invoke(cli, ["ssh-config"]).exit_code == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


def test_plan_says_what_the_minor_needs_and_warns_about_an_end_of_life_one(tmp_path):
    result = CliRunner().invoke(cli, ["plan"])
    assert result.exit_code == 0
    assert "Kubernetes 1.35: kubeadm kubeadm.k8s.io/v1beta4, containerd ≥ 1.7" in result.stdout
    assert "Accelerator auto (resolved by `up`; budgets shown for tcg)" in result.stdout
    old = tmp_path / "old.yaml"
    old.write_text('kubernetes: {version: "1.31"}\n')
    result = CliRunner().invoke(cli, ["--config", str(old), "plan"])
    assert result.exit_code == 0
    assert "labctl: warning: kubernetes.version: Kubernetes 1.31 is past its end of upstream support (2025-10-28)" \
        in result.stderr
    new = tmp_path / "new.yaml"
    new.write_text('kubernetes: {version: "1.36"}\n')
    refused = run(["--config", str(new), "plan"])
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("labctl: error: kubernetes.version: Kubernetes 1.36 needs containerd ≥ 2.0")
    assert len(refused.stderr.splitlines()) == 1
