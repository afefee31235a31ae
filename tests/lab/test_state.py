"""A lab's state directory: private, and safe with several labctl processes writing at once."""

import os
import subprocess
import sys
import textwrap

import pytest

from labctl.lab.state import LabState, write_private

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from labctl.lab.state import LabState, write_private
    state = LabState("k8s", Path(sys.argv[1]))
    for i in range(300):
        state.ensure()
        write_private(state.root / "ssh_config", f"{i}".encode())
""")


@pytest.mark.races
def test_concurrent_writers_and_checks_of_the_state_dir_never_trip_over_each_other(tmp_path):
    """`labctl ssh` to six nodes at once: each writes the lab's ssh files and checks the directory."""
    root = tmp_path / "k8s"
    LabState("k8s", root).ensure()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errors
    assert sorted(os.listdir(root)) == ["ssh_config"]  # no temporary file left behind


def test_private_files_are_0600_from_the_start(tmp_path):
    write_private(tmp_path / "secret", b"x")
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
