"""Host-side access to a running lab: ssh, ssh-config, kubeconfig, logs, console, stop, start, doctor.

Thin click wrappers over :mod:`labctl.access` and :mod:`labctl.ops`.
Shell completion (commands and node names) is click's: ``eval "$(_LABCTL_COMPLETE=bash_source labctl)"``
(``zsh_source``, ``fish_source`` for other shells).
"""

import socket
import sys
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from labctl.access import ssh as access
from labctl.cli.context import Context, pass_ctx
from labctl.errors import LabError, StateError
from labctl.lab.plan import NodePlan, Plan
from labctl.lab.state import LabState
from labctl.ops.lifecycle import STOP_TIMEOUT

CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"


def complete_nodes(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Node names of the selected lab (``--config``/``--name`` already on the command line count)."""
    from labctl.lab.config import load_lab
    from labctl.lab.plan import plan_lab

    params = ctx.find_root().params
    try:
        names = plan_lab(load_lab(params.get("config"), params.get("name"))).node_names
    except LabError:
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def _lab_state(the_plan: Plan, state: LabState) -> LabState:
    if not state.exists:
        raise StateError(f"lab {the_plan.lab.name} has not been created on this host: no {state.root / 'lab.json'}",
                         "run `labctl up` first")
    return state


def lab_route(ctx: Context, jump: str | None = None) -> access.Route:
    """How to reach the lab's nodes, with its known_hosts and ssh config written."""
    from labctl.pki.secrets import ensure_secrets

    the_plan = ctx.plan()
    state = _lab_state(the_plan, ctx.state(the_plan.lab))
    reach = ctx.reach(the_plan.lab)
    return access.open_route(the_plan, state, ensure_secrets(state, the_plan), local=reach.local,
                             jump=jump or reach.jump)


def _ssh_argv(ctx: Context, node: str, command: tuple[str, ...], jump: str | None) -> list[str]:
    access.find_node(ctx.plan(), node)  # an unknown node is reported before anything is written
    return lab_route(ctx, jump).argv(node, command)


_JUMP_HELP = ("Reach the lab through this [USER@]HOST[:PORT] first: the hypervisor host, which reaches the lab's "
              "NAT network (default: the host of a qemu+ssh:// --connect URI).")


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--jump", metavar="[USER@]HOST[:PORT]", help=_JUMP_HELP)
@click.argument("node", shell_complete=complete_nodes)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def ssh(ctx: Context, node: str, command: tuple[str, ...], jump: str | None) -> None:
    """Log in to NODE as the lab user, or run COMMAND there (`labctl ssh master1 -- sudo crictl ps`).

    Runs OpenSSH with the lab's key and pinned host keys; its terminal and exit code are ssh's.
    Nodes are reached through the gateway when the internal network is not the host's
    (bridge mode, remote hypervisor).
    """
    if command[:1] == ("--",):
        command = command[1:]  # options stop at NODE, so click hands the "--" on
    access.exec_argv(_ssh_argv(ctx, node, command, jump))


@click.command("ssh-config")
@click.option("--jump", metavar="[USER@]HOST[:PORT]", help=_JUMP_HELP)
@pass_ctx
def ssh_config(ctx: Context, jump: str | None) -> None:
    """Print Host blocks (<lab>-<node>) for ~/.ssh/config: `labctl ssh-config >> ~/.ssh/config`."""
    route = lab_route(ctx, jump)
    click.echo(access.ssh_config_text(route.plan, route.state, via_gateway=route.via_gateway,
                                      first_hop=route.first_hop), nl=False)


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the kubeconfig to FILE (mode 0600) instead of printing it.")
@click.option("--merge", is_flag=True,
              help="Merge into $KUBECONFIG's first file or ~/.kube/config, replacing this lab's entries, "
                   "and make the lab's context current.")
@pass_ctx
def kubeconfig(ctx: Context, output: Path | None, merge: bool) -> None:
    """Print (or write) a kubeconfig with the lab's admin certificate, for kubectl on this host."""
    from labctl.access import kubeconfig as kc
    from labctl.pki.secrets import ensure_secrets

    if output is not None and merge:
        raise click.UsageError("--output and --merge exclude each other")
    the_plan = ctx.plan()
    state = _lab_state(the_plan, ctx.state(the_plan.lab))
    data = kc.kubeconfig_dict(the_plan, ensure_secrets(state, the_plan), kc.choose_server(the_plan, socket.getaddrinfo))
    if merge:
        target = kc.default_merge_target()
        written = kc.write_kubeconfig(target, kc.merge_kubeconfig(kc.read_kubeconfig(target), data))
        ctx.report(f"merged lab {the_plan.lab.name} into {written}; context {data['current-context']} is current")
    elif output is not None:
        written = kc.write_kubeconfig(output, data)
        ctx.report(f"wrote {written}; use it with: kubectl --kubeconfig {written} get nodes")
    else:
        click.echo(kc.dump_kubeconfig(data), nl=False)


@click.command()
@click.argument("node", shell_complete=complete_nodes)
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended, until Ctrl-C.")
@pass_ctx
def logs(ctx: Context, node: str, follow: bool) -> None:
    """Show NODE's serial console (boot and cloud-init output).

    When the console log is not readable here (a remote hypervisor, or a root-only log file), this reads
    the node's /var/log/cloud-init-output.log over ssh instead (`labctl ssh NODE -- sudo cat …`).
    """
    the_plan = ctx.plan()
    path = ctx.backend(the_plan.lab).console_log(access.find_node(the_plan, node))
    try:
        if path is not None and _print_console_log(ctx, node, path, follow):
            return
        reader = ["sudo", "tail", "-n", "+1", "-F", CLOUD_INIT_LOG] if follow else ["sudo", "cat", CLOUD_INIT_LOG]
        access.exec_argv(_ssh_argv(ctx, node, tuple(reader), None))
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C ends --follow: quietly, like tail -f


def _print_console_log(ctx: Context, node: str, path: Path, follow: bool) -> bool:
    """Copy the console log to stdout; False when it is not ours to read."""
    try:
        access.follow_log(path, sys.stdout.buffer, follow=follow)
    except FileNotFoundError as err:
        raise StateError(f"no console log for {node} yet ({path})", "has the lab been started? `labctl up`") from err
    except PermissionError:
        ctx.report(f"{path} is not readable by you; reading cloud-init's log over ssh instead")
        return False
    return True


@click.command()
@click.argument("node", shell_complete=complete_nodes)
@pass_ctx
def console(ctx: Context, node: str) -> None:
    """Attach to NODE's serial console (libvirt: virsh console, leave with Ctrl-]; VirtualBox writes the
    serial port to a file, so this follows it read-only: tail -f).

    The console log stays readable with `labctl logs NODE`.
    """
    the_plan = ctx.plan()
    argv = ctx.backend(the_plan.lab).console_argv(access.find_node(the_plan, node))
    access.exec_argv(argv)


wait_timeout_option = click.option(
    "--timeout", type=click.IntRange(1, 86400), default=None, metavar="SECONDS",
    help="How long to wait for readiness. Default: the budget table's, for the accelerator (`labctl plan` shows it); "
         "every node fails with its own message before then.")


def _selected(the_plan: Plan, names: tuple[str, ...]) -> list[NodePlan]:
    """The named nodes in boot order, or every node."""
    for name in names:
        access.find_node(the_plan, name)
    return [node for node in the_plan.nodes if not names or node.name in names]


@click.command()
@click.argument("nodes", nargs=-1, metavar="[NODE]...", shell_complete=complete_nodes)
@click.option("--timeout", type=click.IntRange(0, 3600), default=STOP_TIMEOUT, show_default=True, metavar="SECONDS",
              help="How long each node gets to shut down (ACPI) before it is forced off.")
@pass_ctx
def stop(ctx: Context, nodes: tuple[str, ...], timeout: int) -> None:
    """Shut the lab's nodes (or NODEs) down gracefully: workers first, the gateway last."""
    from labctl.ops.lifecycle import stop as stop_nodes

    the_plan = ctx.plan()
    selected = _selected(the_plan, nodes)
    stop_nodes(the_plan, ctx.backend(the_plan.lab), ctx.state(the_plan.lab), selected, ctx.events(), timeout=timeout)


@click.command()
@click.argument("nodes", nargs=-1, metavar="[NODE]...", shell_complete=complete_nodes)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the started nodes are ready.")
@wait_timeout_option
@pass_ctx
def start(ctx: Context, nodes: tuple[str, ...], wait: bool, timeout: int | None) -> None:
    """Start the lab's stopped nodes (or NODEs), the gateway first, and wait until they are ready.

    Addresses are static, so etcd and the certificates stay valid across stop/start and host reboots;
    each node announces its phase again at boot."""
    from labctl.ops.lifecycle import start as start_nodes

    the_plan = ctx.plan()
    selected = _selected(the_plan, nodes)
    start_nodes(the_plan, ctx.backend(the_plan.lab), ctx.state(the_plan.lab), selected, ctx.events(), wait=wait,
                timeout=timeout)
    if wait:
        ctx.report(f"lab {the_plan.lab.name}: {len(selected)} nodes ready")


@click.command()
@click.option("--offline", is_flag=True, help="Do not check that an uncached image is downloadable.")
@pass_ctx
def doctor(ctx: Context, offline: bool) -> None:
    """Check that this host can run the lab: one line per check, OK/WARN/FAIL with the fix.

    Exits 1 when a check FAILs; `labctl up` refuses to start on the same failures.
    """
    from labctl.ops.doctor import blocking_failures, run_checks
    from labctl.ops.preflight import Probes, gather_facts, probe_url

    the_plan = ctx.plan()
    lab = the_plan.lab
    facts = gather_facts(the_plan, lab.backend, ctx.target or "its default", lambda: ctx.backend(lab),
                         local=ctx.reach(lab).local, probes=Probes(probe_url=None if offline else probe_url))
    checks = run_checks(the_plan, facts)
    for check in checks:
        click.echo(check.line())
    failures = blocking_failures(checks)
    if failures:
        raise LabError(f"{len(failures)} check(s) failed: {', '.join(dict.fromkeys(c.name for c in failures))}",
                       "`labctl up` refuses to start until they pass")


def register(cli: click.Group) -> None:
    """Add the host-side commands to the ``labctl`` group."""
    for command in (ssh, ssh_config, kubeconfig, logs, console, stop, start, doctor):
        cli.add_command(command)

