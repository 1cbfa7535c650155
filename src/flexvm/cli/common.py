"""What every command shares: the output option, the client, and waiting on operations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from flexvm.cli import output, projects_context
from flexvm.cli.client import ApiClient
from flexvm.config import Settings
from flexvm.errors import InvalidInput

OutputOpt = typer.Option(output.Format.table, "--output", "-o", help="table or json (the API's own shape)")


def client(project: str | None = None) -> ApiClient:
    """The API client, in ``project`` or else the project the CLI works in (projects_context)."""
    return ApiClient.from_settings(Settings.from_env(), project=project or projects_context.current())


def read_user_data(path: Path) -> str:
    """The text of a --user-data file, or an error naming the option and the file."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput("user_data", f"cannot read {path}: {err}") from err


def finish(
    api: ApiClient,
    operation: dict[str, Any],
    label: str,
    no_wait: bool,
    fmt: output.Format,
    show: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """After a request that started an operation: return at once (--no-wait) or wait and show."""
    if no_wait:
        if fmt is output.Format.json:
            output.emit_json(operation)
        else:
            output.console.print(
                f"operation {operation['id']} {operation['status']} ({operation['kind']} "
                f"{operation['target_name']}); follow it with `flexvm operation wait {operation['id']}`"
            )
        return operation
    done = output.wait_with_progress(lambda update: api.wait(operation["id"], update), label)
    if show is not None:
        show()
    elif fmt is output.Format.json:
        output.emit_json(done)
    return done
