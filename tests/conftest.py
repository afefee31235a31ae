"""Every test gets its own XDG data and cache dirs: no test touches the user's labs or images."""

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("LABCTL_CONFIG", raising=False)
    monkeypatch.delenv("LABCTL_NAME", raising=False)
    return home
