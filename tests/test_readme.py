"""README's Python example runs as written (against the in-memory backend, with a stand-in image)."""

import ast
import re
from pathlib import Path

import labctl.backends
import labctl.ops.cnisupply
import labctl.ops.imagesupply
from labctl.backends.base import BaseImage
from tests.backends.fake import FakeBackend
from tests.guest.manifests import FLANNEL

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_python_example_brings_a_lab_up(monkeypatch, tmp_path, capsys):
    [example] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    backend = FakeBackend(console_dir=tmp_path)
    monkeypatch.setattr(labctl.backends, "open_backend", lambda name, target=None: backend)
    monkeypatch.setattr(labctl.ops.imagesupply, "image_for_lab",
                        lambda lab, quiet=False: BaseImage(tmp_path / "base.qcow2", "sha512:ab", "qcow2"))
    monkeypatch.setattr(labctl.ops.cnisupply, "cni_for_plan", lambda plan: FLANNEL)  # no download in tests
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    rows = ast.literal_eval(capsys.readouterr().out)  # what the example printed: a list of tuples
    assert [state for _, state in rows] == ["running"] * 7
    assert backend.closed, "the example's `with` closes the backend"
