"""``labctl etcd status | snapshot save FILE | snapshot restore FILE`` and ``labctl drill NAME``: parse, call
:mod:`labctl.ops.etcd` / :mod:`labctl.ops.drill`, print (a table or lines; ``--output json``)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from labctl.access import ssh
from labctl.cli.context import Context, pass_ctx
from labctl.cli.host import lab_route
from labctl.cli.tables import table
from labctl.ops.drill import DRILLS, DrillResult

output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                             show_default=True)


def _etcdctl(ctx: Context) -> Any:
    from labctl.ops.etcd import SSH_TIMEOUT, Etcdctl

    route = lab_route(ctx)

    def remote(node: str, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = SSH_TIMEOUT) -> ssh.Ran:
        return ssh.run_remote(route, node, argv, stdin=stdin, timeout=timeout)

    return Etcdctl(route.plan, remote)


@click.group()
def etcd() -> None:
    """The lab's etcd: members and health, snapshots (etcdctl runs on a master, over ssh)."""


@etcd.command()
@output_option
@pass_ctx
def status(ctx: Context, output: str) -> None:
    """Every member: health, leader, revision, DB size (the masters' etcd when stacked, etcd1..N when external)."""
    from labctl.ops.etcd import etcd_status

    found = etcd_status(_etcdctl(ctx))
    if output == "json":
        click.echo(json.dumps(found.as_dict(), indent=2))
        return
    rows = [[m.name, m.endpoint, "healthy" if m.healthy else f"UNHEALTHY ({m.error or 'no answer'})",
             "leader" if m.leader else "-", str(m.revision) if m.revision is not None else "-", _size(m.db_size),
             m.version or "-", str(m.raft_term) if m.raft_term is not None else "-"] for m in found.members]
    click.echo(table(["MEMBER", "ENDPOINT", "HEALTH", "LEADER", "REVISION", "DB SIZE", "VERSION", "RAFT TERM"], rows),
               nl=False)
    verdict = "has a quorum" if found.healthy >= found.quorum else "has NO quorum: writes are refused"
    click.echo(f"\n{found.topology} etcd: {found.healthy} of {len(found.members)} healthy, a quorum is "
               f"{found.quorum}: it {verdict} (etcdctl ran on {found.via})")


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.0f} KiB" if value < 1 << 20 else f"{value / (1 << 20):.1f} MiB"


@etcd.group()
def snapshot() -> None:
    """Save the lab's etcd to a file here, or restore it from one (external etcd)."""


@snapshot.command()
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@output_option
@pass_ctx
def save(ctx: Context, file: Path, output: str) -> None:
    """Take a snapshot over the lab network with the lab's certificates; FILE is written (0600) only once the
    snapshot was read back by etcd on the node and the copy here matches it byte for byte."""
    from labctl.ops.etcd import snapshot_save

    saved = snapshot_save(_etcdctl(ctx), file, ctx.report)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(saved), indent=2))
        return
    click.echo(f"saved {saved.path}: {_size(saved.bytes)}, revision {saved.revision}, {saved.keys} keys, "
               f"sha256 {saved.sha256}")
    click.echo(f"verified: etcd on {saved.via} read the snapshot of {saved.member} back, and this copy's SHA-256 "
               "matches the node's")


@snapshot.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
@output_option
@pass_ctx
def restore(ctx: Context, file: Path, yes: bool, output: str) -> None:
    """Replace the external etcd's data with FILE: every member stops, is restored with the plan's name and peer
    URL (its old data dir kept beside it), and starts; then the cluster must be healthy again.

    Kubernetes' own advice applies: the apiservers should not run meanwhile (stop the masters' kubelets, or
    `labctl stop` the masters, then start them after)."""
    from labctl.ops.etcd import snapshot_restore

    if not yes and sys.stdin.isatty():
        click.confirm(f"Replace the lab's etcd data with {file}?", abort=True, err=True)
    done = snapshot_restore(_etcdctl(ctx), file, ctx.report)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(done), indent=2))
        return
    click.echo(f"restored {done.snapshot} (revision {done.snapshot_revision}) on {', '.join(done.members)} in "
               f"{done.seconds:.0f}s: {done.healthy} healthy, leader {done.leader}, revision now {done.revision}")


@click.command()
@click.argument("name", metavar="NAME", type=click.Choice(DRILLS))
@output_option
@pass_ctx
def drill(ctx: Context, name: str, output: str) -> None:
    """Run a failure drill against the live lab and put it back: lb, master or etcd-member.

    lb powers off the load balancer holding the API address (keepalived moves it); master powers off the last
    master (HAProxy routes around it); etcd-member stops etcd members (quorum kept, then lost, then back)."""
    from labctl.ops.drill import lab_for_drills, run_drill
    from labctl.pki.secrets import ensure_secrets

    route = lab_route(ctx)
    the_plan, state = route.plan, route.state
    secrets = ensure_secrets(state, the_plan)
    lab = lab_for_drills(the_plan, ctx.backend(the_plan.lab), state, route, ctx.events(),
                         secrets.haproxy_stats_password)
    result = run_drill(name, lab)
    if output == "json":
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(render_drill(result), nl=False)
    if not result.held:
        click.get_current_context().exit(1)  # the lab did not hold: scripts see it


def render_drill(result: DrillResult) -> str:
    """What a learner reads: each step's action, expectation and observation, then the verdict."""
    lines = [f"drill {result.drill}: {result.summary}"]
    for number, step in enumerate(result.steps, 1):
        seen = ", ".join(_observed(key, value) for key, value in step.observed.items())
        lines += [f"{number}. {step.name}", f"   did:      {step.did}", f"   expected: {step.expected}",
                  f"   observed: {seen}", f"   -> {'as expected' if step.ok else 'NOT as expected'}"]
    lines.append(f"held: {'yes' if result.held else 'NO'} ({result.seconds:.0f}s)")
    lines.append("restored: yes" if result.restored else f"restored: NO; run {result.restore_hint or 'labctl up'}")
    return "\n".join(lines) + "\n"


def _observed(key: str, value: Any) -> str:
    """``vip_moved_after_s: 4.0`` as ``vip moved after 4.0s``."""
    if key.endswith("_s"):
        return f"{key[:-2].replace('_', ' ')} {_shown(value)}{'s' if value is not None else ''}"
    return f"{key.replace('_', ' ')} {_shown(value)}"


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {v}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return "-" if value is None else str(value)


def register(cli: click.Group) -> None:
    cli.add_command(etcd)
    cli.add_command(drill)
