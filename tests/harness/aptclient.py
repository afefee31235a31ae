"""apt-get against a few sources in a directory of its own: its own sources, state, cache and
trust, none of the host's apt configuration, nothing changed on the host.

``APT_CONFIG`` names a config file read before anything else, which points every ``Dir::Etc``
entry (config parts, sources, trusted keys, preferences) and ``Dir::State``/``Dir::Cache`` into
``base``; only keys named by ``signed-by`` in a source are trusted. Commands are argument lists
run through an injected ``run`` (e.g. inside a network namespace).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

Run = Callable[..., subprocess.CompletedProcess[str]]
TIMEOUT = 300.0


def render_apt_conf(base: Path) -> str:
    """The APT_CONFIG file for a root at ``base``."""
    settings = {
        "Dir::Etc::main": "/dev/null",
        "Dir::Etc::parts": base / "etc" / "apt.conf.d",
        "Dir::Etc::sourcelist": base / "etc" / "sources.list",
        "Dir::Etc::sourceparts": base / "etc" / "sources.list.d",
        "Dir::Etc::trusted": base / "etc" / "trusted.gpg",
        "Dir::Etc::trustedparts": base / "etc" / "trusted.gpg.d",
        "Dir::Etc::preferences": base / "etc" / "preferences",
        "Dir::Etc::preferencesparts": base / "etc" / "preferences.d",
        "Dir::State": base / "state",
        "Dir::State::status": base / "state" / "status",
        "Dir::Cache": base / "cache",
        "Dir::Log": base / "log",
        "Debug::NoLocking": "true",
        "APT::Sandbox::User": "root",  # the temp dirs are root's; _apt could not write there
        "Acquire::Languages": "none",
        "Acquire::Retries": "0",
        "Acquire::http::Timeout": "30",
    }
    for value in settings.values():
        if any(char in str(value) for char in '"\n;'):
            raise ValueError(f"cannot put {value!r} into an apt config file")
    return "".join(f'{key} "{value}";\n' for key, value in settings.items())


class AptRoot:
    """``AptRoot(tmp, ["deb [signed-by=…] URL /"]).update(); .download("kubeadm=1.35.0-1.1", into)``."""

    def __init__(self, base: Path, sources: Sequence[str], run: Run = subprocess.run) -> None:
        self.base, self.run = base, run
        for directory in ("etc/apt.conf.d", "etc/sources.list.d", "etc/trusted.gpg.d", "etc/preferences.d",
                          "state/lists/partial", "cache/archives/partial", "log"):
            (base / directory).mkdir(parents=True, exist_ok=True)
        (base / "state" / "status").touch()
        (base / "etc" / "sources.list").write_text("".join(f"{line}\n" for line in sources), encoding="utf-8")
        self.config = base / "apt.conf"
        self.config.write_text(render_apt_conf(base), encoding="utf-8")

    def env(self) -> Mapping[str, str]:
        return {"APT_CONFIG": str(self.config), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}

    def apt_get(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``apt-get -q ARGS`` in this root; the result, whatever its exit status."""
        return self.run(["apt-get", "-q", *args], capture_output=True, text=True, timeout=TIMEOUT, check=False,
                        env=dict(self.env()), cwd=cwd, stdin=subprocess.DEVNULL)

    def update(self) -> subprocess.CompletedProcess[str]:
        # Warnings (a bad signature among them) fail the update too.
        return self.apt_get("--error-on=any", "update")

    def download(self, spec: str, into: Path) -> subprocess.CompletedProcess[str]:
        into.mkdir(parents=True, exist_ok=True)
        return self.apt_get("download", spec, cwd=into)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
