"""The click layer: parse arguments, call the library, print. Errors are caught once, in main()."""

import json
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import click

from labctl import __version__
from labctl.cli.context import Context, pass_ctx
from labctl.cli.etcd import register as register_etcd_commands
from labctl.cli.host import register as register_host_commands
from labctl.cli.host import wait_timeout_option
from labctl.cli.tables import plan_rows, render_plan_table, render_status_table
from labctl.errors import ConfigError, LabError
from labctl.lab.config import default_text
from labctl.lab.model import BACKEND_NAMES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", type=click.Path(dir_okay=False, path_type=Path), envvar="LABCTL_CONFIG",
              help="lab.yaml to use (default: the built-in lab). Env: LABCTL_CONFIG.")
@click.option("-n", "--name", envvar="LABCTL_NAME", help="Lab name, overriding the file's (labs live side by side).")
@click.option("--backend", type=click.Choice(BACKEND_NAMES), help="Hypervisor backend, overriding lab.yaml's.")
@click.option("--connect", "target", metavar="URI",
              help="libvirt URI (default: LIBVIRT_DEFAULT_URI or qemu:///system); VirtualBox is always this host's.")
@click.option("-q", "--quiet", is_flag=True, help="Print only data and errors.")
@click.option("-v", "--verbose", is_flag=True, help="After an error, also show the raw error it came from.")
@click.option("--debug", is_flag=True, envvar="LABCTL_DEBUG", help="Show tracebacks.")
@click.version_option(__version__, prog_name="labctl")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, name: str | None, backend: str | None, target: str | None,
        quiet: bool, verbose: bool, debug: bool) -> None:
    """Build a Kubernetes HA lab out of local virtual machines."""
    options = ctx.ensure_object(Context)  # main() passes one in, to read --debug/--verbose after an error
    options.config, options.name, options.backend_name, options.target = config, name, backend, target
    options.quiet, options.verbose, options.debug = quiet, verbose, debug


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
    from labctl.ops.cnisupply import cached_cni

    the_plan = ctx.plan()
    if cached_cni(the_plan) is None:  # a cached manifest is adapted (and refused here if malformed)
        ctx.report("the CNI manifest is not cached yet: `labctl up` fetches, verifies and adapts it first")
    if output == "json":
        click.echo(json.dumps(plan_rows(the_plan), indent=2))
    else:
        click.echo(render_plan_table(the_plan), nl=False)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_ctx
def render(ctx: Context, directory: Path) -> None:
    """Write what `up` would make (seeds, ISOs, the hypervisor's definitions) into DIRECTORY for review.

    Changes nothing: for a lab that does not exist yet, its secrets and id are throwaway placeholders.
    """
    from labctl.ops.cnisupply import cni_for_render
    from labctl.ops.imagesupply import image_as_known
    from labctl.ops.lifecycle import choose_lab_accel
    from labctl.ops.render import render as write_render

    the_plan = ctx.plan()
    backend = ctx.backend_for_render(the_plan.lab)
    image, cached = image_as_known(the_plan.lab)
    accel = choose_lab_accel(the_plan, backend, ctx.events())
    manifest, cni_cached = cni_for_render(the_plan)
    the_plan = the_plan.with_accel(accel.kind).with_cni_manifest(manifest)
    done = write_render(the_plan, backend, ctx.state(the_plan.lab), accel, image, directory)
    if done.throwaway:
        ctx.report(f"lab {the_plan.lab.name} does not exist here: its secrets and id in these files are throwaway")
    if not cached:
        ctx.report(f"image {the_plan.lab.image.name} is not cached: its digest is shown as {image.digest}")
    if not cni_cached:
        ctx.report("the CNI manifest is not cached: master1's seed carries a comment naming it instead")
    ctx.report(f"wrote {len(done.files)} files under {directory}")


@cli.command()
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every node is ready.")
@click.option("--retry-failed", is_flag=True,
              help="Run the bootstrap of the nodes that failed again (after you fixed the cause); each resumes "
                   "at the step that failed.")
@wait_timeout_option
@pass_ctx
def up(ctx: Context, wait: bool, retry_failed: bool, timeout: int | None) -> None:
    """Create what is missing, start what is stopped, wait until every node is ready."""
    from labctl.ops import lifecycle
    from labctl.ops.cnisupply import cni_for_plan
    from labctl.ops.imagesupply import image_for_lab
    from labctl.ops.preflight import refuse_unready_host

    the_plan = ctx.plan()
    lab = the_plan.lab
    result = lifecycle.up(the_plan, ctx.backend(lab), ctx.state(lab), ctx.events(),
                          supply_image=lambda lab: image_for_lab(lab, quiet=ctx.quiet), supply_cni=cni_for_plan,
                          gate=refuse_unready_host, wait=wait, timeout=timeout, retry_failed=retry_failed)
    if not result.ready:
        ctx.report(f"lab {lab.name}: {len(the_plan.nodes)} nodes started; not waiting (--no-wait)")
        return
    ctx.report(f"lab {lab.name}: {len(the_plan.nodes)} nodes ready" + ("" if result.changes else " (nothing changed)"))


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def status(ctx: Context, output: str) -> None:
    """Each node's state and addresses."""
    from labctl.ops.lifecycle import status as lab_status

    the_plan = ctx.plan()
    rows = lab_status(the_plan, ctx.backend(the_plan.lab), ctx.state(the_plan.lab))
    if output == "json":
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        click.echo(render_status_table(rows), nl=False)
        for row in rows:
            if row.error:
                click.echo(f"{row.name}: {row.error}")


@cli.command()
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
@pass_ctx
def destroy(ctx: Context, yes: bool) -> None:
    """Remove the lab's nodes, disks, seeds and networks (the shared base image stays)."""
    from labctl.ops.lifecycle import destroy as lab_destroy

    lab = ctx.lab()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Destroy lab {lab.name} and everything it created?", abort=True, err=True)
    removed = lab_destroy(lab.name, ctx.backend(lab), ctx.state(lab), ctx.events())
    ctx.report(f"lab {lab.name}: removed {len(removed)} objects" if removed
               else f"lab {lab.name}: nothing to remove")


def _attach_optional_groups() -> None:
    from labctl.cli.image import image
    from labctl.cli.imagebuild import build_command

    image.add_command(build_command)
    cli.add_command(image)


_attach_optional_groups()
register_host_commands(cli)
register_etcd_commands(cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one place where errors become one line on stderr and an exit code."""
    options = Context()  # filled in by the group: --debug and --verbose as click parsed them
    try:
        code = cli.main(args=argv, prog_name="labctl", standalone_mode=False, obj=options)
        if isinstance(code, int) and code:  # ctx.exit(n) returns n when not standalone
            sys.exit(code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except (click.ClickException, click.Abort) as err:
        sys.exit(_click_error(err))
    except KeyboardInterrupt:
        _interrupted()
    except Exception as err:  # noqa: BLE001 - the one place that turns any error into one line
        sys.exit(_one_error(err, options))


def _one_error(err: Exception, options: Context) -> int:
    if options.debug:
        traceback.print_exc()
    if isinstance(err, LabError):
        click.echo(f"labctl: error: {err}", err=True)
        if options.verbose and err.__cause__ is not None:
            click.echo(f"labctl: raw error: {type(err.__cause__).__name__}: {_one_line(str(err.__cause__))}",
                       err=True)
        return err.exit_code
    first = _one_line(str(err))[:300]
    click.echo(f"labctl: error: internal error: {type(err).__name__}: {first} (rerun with --debug)", err=True)
    return 1


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
