"""The `flexvm` command."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from flexvm.cli import output, projects_context
from flexvm.cli.access import audit, project_app, role_app, token_app, user_app, whoami
from flexvm.cli.catalog import image_app, size_app
from flexvm.cli.hints import explain
from flexvm.cli.hosts import host_app, operation_app, server_app
from flexvm.cli.lab import app as lab_app
from flexvm.cli.maintenance import maintenance_app
from flexvm.cli.monitor import advisor, top, vm_metrics
from flexvm.cli.pool import capacity, network_app, set_app
from flexvm.cli.scaling import autoscale_app, scaleset_app
from flexvm.cli.storage import storage_app
from flexvm.cli.vm import app as vm_app
from flexvm.config import Settings
from flexvm.errors import FlexvmError

app = typer.Typer(
    help="flexvm: real virtual machines on your own hosts, Azure-style.",
    epilog="Resource commands work in one project: --project P anywhere on the line, FLEXVM_PROJECT, "
    "or the default `flexvm project use P` saved.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(vm_app, name="vm")
app.add_typer(project_app, name="project")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(role_app, name="role")
app.command("audit")(audit)
app.command("whoami")(whoami)
app.add_typer(size_app, name="size")
app.add_typer(image_app, name="image")
app.add_typer(host_app, name="host")
app.add_typer(operation_app, name="operation")
app.add_typer(server_app, name="server")
app.add_typer(network_app, name="network")
app.add_typer(storage_app, name="storage")
app.add_typer(set_app, name="availability-set")
app.add_typer(scaleset_app, name="scaleset")
app.add_typer(autoscale_app, name="autoscale")
app.command("capacity")(capacity)
app.add_typer(lab_app, name="lab")
app.add_typer(maintenance_app, name="maintenance")
app.command("top")(top)
app.command("advisor")(advisor)
vm_app.command("metrics")(vm_metrics)


@app.command("serve")
def serve(
    host: str | None = typer.Option(None, "--listen", help="address to listen on (default 127.0.0.1)"),
    port: int | None = typer.Option(None, "--port"),
    tls_cert: str | None = typer.Option(
        None, "--tls-cert", help="serve this certificate (PEM, may hold its chain) instead of a generated one"
    ),
    tls_key: str | None = typer.Option(None, "--tls-key", help="the key of --tls-cert (PEM, unencrypted)"),
    plain_http: bool = typer.Option(
        False, "--plain-http", help="serve plain HTTP, not HTTPS (refused unless --listen is loopback)"
    ),
) -> None:
    """Run the API server (the CLI talks to it) over HTTPS: its CA is made in $FLEXVM_HOME/tls/ca.pem."""
    from dataclasses import replace
    from pathlib import Path

    from flexvm.server import serve as run_server

    settings = Settings.from_env()
    if host is not None:
        settings = replace(settings, listen_host=host)
    if port is not None:
        settings = replace(settings, port=port)
    if tls_cert is not None or tls_key is not None:
        settings = replace(
            settings, tls_cert=Path(tls_cert) if tls_cert else None, tls_key=Path(tls_key) if tls_key else None
        )
    if plain_http:
        settings = replace(settings, plain_http=True)
    run_server(settings)


def main() -> None:
    """Entry point: errors become one clear line on stderr and a non-zero exit, never a traceback.

    Click (under Typer) handles usage errors itself (exit 2); flexvm's own errors arrive here.
    """
    try:
        app(args=projects_context.take_project_option(sys.argv[1:]), prog_name="flexvm")
    except FlexvmError as err:
        output.err_console.print(f"[red]error:[/] {escape(explain(err))}", highlight=False, markup=True, soft_wrap=True)
        for note in getattr(err, "__notes__", []):  # e.g. what a failed `lab up` could not remove
            output.err_console.print(f"  {note}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
