"""The click layer: parse arguments, call the core, print. Errors are caught once, in main()."""

import json
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import click

from labctl import __version__
from labctl.cli.context import Context, pass_ctx
from labctl.cli.host import await_ready, wait_timeout_option
from labctl.cli.host import register as register_host_commands
from labctl.errors import ConfigError, LabError
from labctl.lab.config import default_text
from labctl.ops.render import plan_rows, render_plan_table, render_status_table, write_render


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", type=click.Path(dir_okay=False, path_type=Path), envvar="LABCTL_CONFIG",
              help="lab.yaml to use (default: the built-in lab). Env: LABCTL_CONFIG.")
@click.option("-n", "--name", envvar="LABCTL_NAME", help="Lab name, overriding the file's (labs live side by side).")
@click.option("--connect", "uri", metavar="URI", help="libvirt URI (default: LIBVIRT_DEFAULT_URI or qemu:///system).")
@click.option("-q", "--quiet", is_flag=True, help="Print only data and errors.")
@click.option("-v", "--verbose", is_flag=True, help="After an error, also show the raw error it came from.")
@click.option("--debug", is_flag=True, envvar="LABCTL_DEBUG", help="Show tracebacks.")
@click.version_option(__version__, prog_name="labctl")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, name: str | None, uri: str | None, quiet: bool, verbose: bool,
        debug: bool) -> None:
    """Build a Kubernetes HA lab out of local virtual machines."""
    ctx.obj = Context(config, name, uri, quiet, debug)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), default="lab.yaml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(file: Path, force: bool) -> None:
    """Write the default lab, annotated, to FILE (default lab.yaml)."""
    if file.exists() and not force:
        raise ConfigError(str(file), "already exists; use --force to overwrite")
    try:
        file.write_text(default_text(), encoding="utf-8")
    except OSError as err:
        raise ConfigError(str(file), f"cannot write: {err.strerror}") from err
    click.echo(f"wrote {file}; edit it, then run: labctl --config {file} up", err=True)


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def plan(ctx: Context, output: str) -> None:
    """Print the plan: nodes, addresses, MACs. Touches no hypervisor."""
    the_plan = ctx.plan()
    if output == "json":
        click.echo(json.dumps(plan_rows(the_plan), indent=2))
    else:
        click.echo(render_plan_table(the_plan), nl=False)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_ctx
def render(ctx: Context, directory: Path) -> None:
    """Write every artifact (seeds, ISOs, domain and network XML) into DIRECTORY for review."""
    from labctl.lab.accel import choose_accel, read_host_facts

    the_plan = ctx.plan()
    state = ctx.state(the_plan.lab)
    accel = choose_accel(the_plan.lab.accel, read_host_facts())
    written = write_render(the_plan, state, directory, accel.domain_type)
    ctx.report(f"wrote {len(written)} files under {directory}")


@cli.command()
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every node is ready.")
@wait_timeout_option
@pass_ctx
def up(ctx: Context, wait: bool, timeout: int) -> None:
    """Create what is missing, start what is stopped, wait until every node is ready."""
    from labctl.backends.libvirt.facts import Probes, gather_facts
    from labctl.lab.accel import choose_accel
    from labctl.ops.doctor import refuse_if_blocked, run_checks
    from labctl.ops.imagesupply import image_for_lab
    from labctl.ops.lifecycle import remove_seeds
    from labctl.ops.lifecycle import up as apply_up

    the_plan = ctx.plan()
    backend = ctx.backend()
    accel = choose_accel(the_plan.lab.accel, backend.host_facts())
    if accel.domain_type == "qemu":
        ctx.report(f"accelerator: {accel.reason}")
    facts = gather_facts(the_plan, lambda: backend, backend.conn.getURI(), probes=Probes(host_facts=backend.host_facts))
    refuse_if_blocked(run_checks(the_plan, facts))
    image = image_for_lab(the_plan.lab, quiet=ctx.quiet)
    with ctx.locked(the_plan.lab, "up"):
        result = apply_up(the_plan, backend, ctx.state(the_plan.lab), image, accel.domain_type, ctx.report)
        if not wait:
            ctx.report(f"lab {the_plan.lab.name}: {len(the_plan.nodes)} nodes started; not waiting (--no-wait)")
            return
        await_ready(ctx, backend, the_plan.nodes, result.console_offsets, timeout)
        remove_seeds(the_plan, backend, result.lab_id, ctx.report)
    ctx.report(f"lab {the_plan.lab.name}: {len(the_plan.nodes)} nodes ready"
               + ("" if result.changes else " (nothing changed)"))


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def status(ctx: Context, output: str) -> None:
    """Each node's state and addresses."""
    from labctl.ops.lifecycle import status as lab_status

    the_plan = ctx.plan()
    rows = lab_status(the_plan, ctx.backend(), ctx.state(the_plan.lab))
    if output == "json":
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        click.echo(render_status_table(rows), nl=False)


@cli.command()
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
@pass_ctx
def destroy(ctx: Context, yes: bool) -> None:
    """Remove the lab's domains, disks, seeds and networks (the shared base image stays)."""
    from labctl.ops.lifecycle import destroy as lab_destroy

    lab = ctx.lab()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Destroy lab {lab.name} and everything it created?", abort=True, err=True)
    with ctx.locked(lab, "destroy"):
        removed = lab_destroy(lab.name, ctx.backend(), ctx.state(lab), ctx.report)
    ctx.report(f"lab {lab.name}: removed {len(removed)} objects" if removed
               else f"lab {lab.name}: nothing to remove")


def _attach_optional_groups() -> None:
    from labctl.cli.image import image
    from labctl.cli.imagebuild import build_command

    image.add_command(build_command)
    cli.add_command(image)


_attach_optional_groups()
register_host_commands(cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one place where errors become one line on stderr and an exit code."""
    args = argv if argv is not None else sys.argv[1:]
    debug = "--debug" in args or bool(os.environ.get("LABCTL_DEBUG"))
    verbose = "--verbose" in args or "-v" in args
    try:
        code = cli.main(args=argv, prog_name="labctl", standalone_mode=False)
        if isinstance(code, int) and code:  # ctx.exit(n) returns n when not standalone
            sys.exit(code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except (click.ClickException, click.Abort) as err:
        sys.exit(_click_error(err))
    except KeyboardInterrupt:
        _interrupted()
    except Exception as err:  # noqa: BLE001 - the one place that turns any error into one line
        if debug:
            traceback.print_exc()
        if isinstance(err, LabError):
            click.echo(f"labctl: error: {err}", err=True)
            if verbose and err.__cause__ is not None:
                click.echo(f"labctl: raw error: {type(err.__cause__).__name__}: {_one_line(str(err.__cause__))}",
                           err=True)
            sys.exit(err.exit_code)
        first = _one_line(str(err))[:300]
        click.echo(f"labctl: error: internal error: {type(err).__name__}: {first} (rerun with --debug)", err=True)
        sys.exit(1)


def _click_error(err: click.ClickException | click.Abort) -> int:
    if isinstance(err, click.Abort):
        if isinstance(err.__context__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            _interrupted()
        click.echo("labctl: aborted", err=True)
        return 1
    if isinstance(err, click.UsageError):
        where = err.ctx.command_path if err.ctx else "labctl"
        click.echo(f"labctl: error: {_one_line(err.format_message())} (see `{where} --help`)", err=True)
        return 2
    click.echo(f"labctl: error: {_one_line(err.format_message())}", err=True)
    return err.exit_code


def _interrupted() -> NoReturn:
    click.echo("labctl: interrupted; run the same command again to resume, or `labctl destroy`", err=True)
    sys.exit(130)


def _one_line(text: str) -> str:
    return " ".join(text.split())
