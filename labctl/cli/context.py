"""What every CLI command gets: the global options, and the lab, plan, state and backend they select."""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from labctl.backends import open_backend, reach, unconnected_backend
from labctl.backends.base import Backend, Reach
from labctl.cli.output import TerminalEvents
from labctl.errors import BackendError
from labctl.lab.config import load_lab
from labctl.lab.model import Lab
from labctl.lab.plan import Plan, plan_lab
from labctl.lab.state import LabState
from labctl.lab.versions import support_warnings


@dataclass
class Context:
    """The global options (filled in by the ``labctl`` group) and what they select."""

    config: Path | None = None
    name: str | None = None
    backend_name: str | None = None  # --backend; None: lab.yaml's
    target: str | None = None  # --connect
    quiet: bool = False
    verbose: bool = False
    debug: bool = False

    def lab(self) -> Lab:
        """lab.yaml with --name and --backend applied, validated together (some settings are one backend's)."""
        return load_lab(self.config, self.name, self.backend_name)

    def plan(self) -> Plan:
        """The lab's plan; a Kubernetes minor past its end of support is said in one line (stderr)."""
        the_plan = plan_lab(self.lab())
        for warning in support_warnings(the_plan.lab.kubernetes.version, datetime.date.today()):
            click.echo(f"labctl: warning: {warning}", err=True)
        return the_plan

    def state(self, lab: Lab) -> LabState:
        return LabState.for_lab(lab.name)

    def backend(self, lab: Lab) -> Backend:
        """The lab's backend, connected; closed when the command ends."""
        return click.get_current_context().with_resource(open_backend(lab.backend, self.target))

    def backend_for_render(self, lab: Lab) -> Backend:
        """The lab's backend, connected if its hypervisor answers; else one that can only render
        (said on stderr), so `labctl render` works on a host without the hypervisor running."""
        try:
            return self.backend(lab)
        except BackendError as err:
            backend = unconnected_backend(lab.backend, self.target)
            self.report(f"{err.message}: rendering with the defaults of a fresh host")
            return backend

    def reach(self, lab: Lab) -> Reach:
        """How this host reaches the lab's nodes (no connection to the hypervisor needed)."""
        return reach(lab.backend, self.target)

    def events(self) -> TerminalEvents:
        return TerminalEvents(sys.stderr, sys.stderr.isatty(), self.quiet)

    def report(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)


pass_ctx = click.make_pass_decorator(Context, ensure=True)
