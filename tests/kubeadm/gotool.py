"""The go command for the test tooling: one cache directory, a fixed environment, progress on stderr.

Everything Go writes goes under the test cache (``$LABCTL_TEST_CACHE``, default ``/var/cache/labctl-tests``):
the module cache in ``go/mod`` and the build cache in ``go/build``, so a machine that kept that directory
builds warm. Builds are static (``CGO_ENABLED=0``), never edit go.mod or go.sum (``-mod=readonly``: what
the committed go.sum pins is what is built) and leave the module cache writable so a plain ``rm -r``
empties it.
"""

import fcntl
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path("/var/cache/labctl-tests")
CACHE_ENV = "LABCTL_TEST_CACHE"
GO_HOME_BIN = "/usr/local/go/bin"  # where Go's own tarball installs it, when that is not on PATH
PROGRESS_EVERY = 15.0  # seconds between progress lines of a long build
TAIL_LINES = 40  # of go's output, shown when a build fails
MIN_GO = (1, 25)  # the go line of k8s.io/kubernetes v1.35's go.mod


class BuildError(Exception):
    """A tool could not be built; the message says what go said."""


class GoUnavailable(BuildError):
    """No usable go command on this machine."""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


@dataclass(frozen=True)
class Go:
    """``go`` with the cache's environment; every call is an argv list run in a given module directory."""

    binary: str
    cache: Path

    @classmethod
    def find(cls, cache: Path | None = None) -> "Go":
        binary = shutil.which("go") or shutil.which("go", path=GO_HOME_BIN)
        wanted = "Go >= {}.{} (Go's own build; Debian 12's golang-go 1.19 is too old)".format(*MIN_GO)
        if binary is None:
            raise GoUnavailable(f"go is neither on PATH nor in {GO_HOME_BIN}: the real kubeadm is built with {wanted}")
        go = cls(binary, cache or cache_root())
        version = go.version()
        release = _go_release(version)
        if release is not None and release < MIN_GO:
            raise GoUnavailable(f"{binary} is {version}: the real kubeadm is built with {wanted}")
        return go

    def env(self, writable_module: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GOMODCACHE=str(self.cache / "go" / "mod"),
            GOCACHE=str(self.cache / "go" / "build"),
            CGO_ENABLED="0",
            GOWORK="off",
            # The machine's own Go, never one downloaded behind the user's back.
            GOTOOLCHAIN=os.environ.get("GOTOOLCHAIN") or "local",
            GOFLAGS=f"-mod={'mod' if writable_module else 'readonly'} -modcacherw -buildvcs=false",
        )
        return env

    def make_cache(self) -> None:
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BuildError(f"cannot create the test cache {self.cache} ({error.strerror}): "
                             f"set {CACHE_ENV} to a writable directory") from error

    def output(self, args: Sequence[str], cwd: Path, writable_module: bool = False) -> str:
        """Run ``go ARGS`` in ``cwd`` and return its stdout; a failure raises :class:`BuildError`."""
        self.make_cache()
        argv = [self.binary, *args]
        try:
            done = subprocess.run(argv, cwd=cwd, env=self.env(writable_module), capture_output=True, text=True,
                                  check=False)
        except OSError as error:
            raise GoUnavailable(f"cannot run {self.binary}: {error}") from error
        if done.returncode != 0:
            raise BuildError(f"go {' '.join(args)} (in {cwd}) failed with exit {done.returncode}:\n"
                             f"{done.stderr.strip()}")
        return done.stdout

    def json(self, args: Sequence[str], cwd: Path) -> Any:
        return json.loads(self.output(args, cwd))

    def version(self) -> str:
        return self.output(["env", "GOVERSION"], self.cache).strip()

    def build(self, package: str, output: Path, cwd: Path, flags: Sequence[str]) -> None:
        """``go build -o OUTPUT PACKAGE`` in module ``cwd``, a progress line every 15 s on stderr."""
        argv = [self.binary, "build", "-v", *flags, "-o", str(output), package]
        self.make_cache()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        downloads = packages = 0
        last = started = time.monotonic()
        try:
            process = subprocess.Popen(argv, cwd=cwd, env=self.env(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
        except OSError as error:
            raise GoUnavailable(f"cannot run {self.binary}: {error}") from error
        with process:
            assert process.stderr is not None
            for line in process.stderr:  # -v: one line per package compiled, one per module downloaded
                tail.append(line.rstrip())
                if line.startswith("go: downloading "):
                    downloads += 1
                else:
                    packages += 1
                if time.monotonic() - last >= PROGRESS_EVERY:
                    last = time.monotonic()
                    progress(f"  {package}: {downloads} modules downloaded, {packages} packages compiled, "
                             f"{last - started:.0f} s")
        if process.returncode != 0:
            raise BuildError(f"go build {package} failed with exit {process.returncode}:\n" + "\n".join(tail))


def _go_release(version: str) -> tuple[int, int] | None:
    """(1, 26) from "go1.26.8"; None for what does not read as a release (a development build: go decides)."""
    major, _, rest = version.removeprefix("go").partition(".")
    minor = "".join(itertools.takewhile(str.isdigit, rest))
    return (int(major), int(minor)) if major.isdigit() and minor else None


@contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path``, saying on stderr whom we wait for if another run holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            progress(f"waiting for another build of {what} ({handle.read().strip() or 'holder unknown'})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
