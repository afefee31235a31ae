"""What every CLI command gets: the global options, and the lab, plan and state they select."""

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from labctl.lab.config import load_lab
from labctl.lab.lock import lab_lock
from labctl.lab.model import Lab
from labctl.lab.plan import Plan, plan_lab
from labctl.lab.state import LabState


@dataclass
class Context:
    config: Path | None
    name: str | None
    uri: str | None
    quiet: bool
    debug: bool

    def lab(self) -> Lab:
        return load_lab(self.config, self.name)

    def plan(self) -> Plan:
        return plan_lab(self.lab())

    def state(self, lab: Lab) -> LabState:
        return LabState.for_lab(lab.name)

    def backend(self) -> Any:
        from labctl.backends.libvirt.backend import LibvirtBackend

        return LibvirtBackend.connect(self.uri)

    def locked(self, lab: Lab, command: str) -> AbstractContextManager[None]:
        """The lab's lock, for commands that change it (up, destroy, stop, start)."""
        return lab_lock(self.state(lab), command, clock=time.monotonic, sleep=time.sleep)

    def report(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)


pass_ctx = click.make_pass_decorator(Context)
