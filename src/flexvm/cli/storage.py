"""`flexvm storage add|list|show|remove`: shared directories every host sees at the same path."""

from __future__ import annotations

from typing import Any

import typer

from flexvm.cli import output
from flexvm.cli.common import OutputOpt, client

storage_app = typer.Typer(
    help="Shared storage: a directory every host mounts at the same path, for VMs any host can run.",
    no_args_is_help=True,
)


def _reach(item: dict[str, Any]) -> None:
    asked = [
        {"host": host, "reaches": "yes" if why is None else "no", "why": why} for host, why in item["hosts"].items()
    ]
    skipped = [
        {"host": host, "reaches": "not asked", "why": f"the host is {state}"} for host, state in item["skipped"].items()
    ]
    output.table(
        sorted(asked + skipped, key=lambda r: r["host"]),
        [
            ("HOST", lambda r: r["host"]),
            ("REACHES IT", lambda r: r["reaches"]),
            ("WHY NOT", lambda r: r["why"] or ""),
        ],
    )


@storage_app.command("add")
def add(
    name: str,
    path: str = typer.Option(..., "--path", help="the directory, mounted at this path on every host"),
    shared: bool = typer.Option(True, "--shared/--local", help="shared by every host (the only kind there is)"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Declare shared storage once every host reaches it (each is checked, and named if it cannot)."""
    if not shared:
        raise typer.BadParameter(
            "only shared storage is declared: each host's own disk is there already", param_hint="--local"
        )
    item = client().post("/storage", {"name": name, "path": path})
    if fmt is output.Format.json:
        output.emit_json(item)
        return
    output.console.print(f"storage {name} at {item['path']}: every host reaches it")
    _reach(item)


@storage_app.command("list")
def list_storage(fmt: output.Format = OutputOpt) -> None:
    """List shared storage."""
    items = client().get("/storage")
    if fmt is output.Format.json:
        output.emit_json(items)
        return
    output.table(items, [("NAME", lambda s: s["name"]), ("PATH", lambda s: s["path"])])


@storage_app.command("show")
def show(name: str, fmt: output.Format = OutputOpt) -> None:
    """The storage as every host sees it now, and the VMs whose disks are there."""
    item = client().get(f"/storage/{name}")
    if fmt is output.Format.json:
        output.emit_json(item)
        return
    output.details([("name", item["name"]), ("path", item["path"]), ("VMs", ", ".join(item["vms"]) or "none")])
    _reach(item)


@storage_app.command("remove")
def remove(name: str) -> None:
    """Forget shared storage no VM uses (its files stay where they are)."""
    client().delete(f"/storage/{name}")
    output.console.print(f"removed storage {name}")
