"""`pip install .` (not editable) into a fresh venv gives a labctl that works from any directory."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_installed_labctl_works_outside_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # From a copy, so the build's leftovers (build/, *.egg-info) never land in the checkout.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    subprocess.run([*pip, str(source)], check=True, timeout=900, cwd=tmp_path)
    labctl = str(venv / "bin" / "labctl")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import labctl; print(labctl.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, env=env, timeout=60)
    assert str(venv) in where.stdout, "imported from the venv, not the checkout"
    plan = subprocess.run([labctl, "plan", "-o", "json"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert len(json.loads(plan.stdout)["nodes"]) == 7
    rendered = subprocess.run([labctl, "render", str(tmp_path / "out")], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    assert "<forward mode=\"nat\"" in (tmp_path / "out" / "networks" / "k8s-nat.xml").read_text()
    available = subprocess.run([labctl, "image", "list", "--available", "-o", "json"], capture_output=True,
                               text=True, cwd=tmp_path, env=env, timeout=60)
    assert available.returncode == 0, available.stderr
    assert "debian-13-genericcloud-amd64" in available.stdout
    init = subprocess.run([labctl, "init", str(tmp_path / "lab.yaml")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert init.returncode == 0 and "enforce_minimums" in (tmp_path / "lab.yaml").read_text()
