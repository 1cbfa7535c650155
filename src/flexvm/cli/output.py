"""Rendering: tables for people, the API's own JSON for scripts, a progress line for operations."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from flexvm.errors import OperationCanceled, OperationFailed, OperationTimeout
from flexvm.model.units import MIB, format_bytes

# When piped, do not squeeze tables into 80 columns: scripts and logs read whole lines.
console = Console() if sys.stdout.isatty() else Console(width=200)
err_console = Console(stderr=True)


class Format(StrEnum):
    table = "table"
    json = "json"


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any]]],
    title: str | None = None,
) -> None:
    grid = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for heading, _ in columns:
        grid.add_column(heading)
    for row in rows:
        grid.add_row(*[_cell(get(row)) for _, get in columns])
    console.print(grid)


def details(pairs: Sequence[tuple[str, Any]]) -> None:
    grid = Table(show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in pairs:
        grid.add_row(key, _cell(value))
    console.print(grid)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(value)


def mib(value: int) -> str:
    return format_bytes(value * MIB)


def nbytes(value: int) -> str:
    return format_bytes(value)


def wait_with_progress(
    wait: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]], label: str, quiet: bool = False
) -> dict[str, Any]:
    """Wait for an operation, showing its current step; raise if it failed."""
    if quiet or not err_console.is_terminal:
        operation = wait(lambda _op: None)
    else:
        with err_console.status(label) as status:

            def update(op: dict[str, Any]) -> None:
                status.update(f"{label}: {op['progress']}% {op['message']}")

            operation = wait(update)
    if operation["status"] == "canceled":
        raise OperationCanceled(
            f"{operation['kind']} of {operation['target_name']} was canceled; what it had done was undone",
            details={"operation_id": operation["id"]},
        )
    if operation["status"] == "failed":
        error = operation.get("error") or {}
        cls = OperationTimeout if error.get("code") == "OperationTimeout" else OperationFailed
        raise cls(
            f"{operation['kind']} of {operation['target_name']} failed: {error.get('message', operation['message'])}",
            details={"operation_id": operation["id"], **(error.get("details") or {})},
        )
    return operation


@contextmanager
def byte_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar of bytes sent, on a terminal; yields ``advance(n)``."""
    if not err_console.is_terminal:
        yield lambda _n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
