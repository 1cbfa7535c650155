"""`flexvm host …` and `flexvm operation …`"""

from __future__ import annotations

from typing import Any

import typer

from flexvm.cli import output
from flexvm.cli.common import OutputOpt, client

host_app = typer.Typer(help="Hosts: machines that run guests.", no_args_is_help=True)
operation_app = typer.Typer(help="Operations: every change, as it runs and after.", no_args_is_help=True)


@host_app.command("list")
def list_hosts(fmt: output.Format = OutputOpt) -> None:
    """List hosts."""
    hosts = client().get("/hosts")
    if fmt is output.Format.json:
        output.emit_json(hosts)
        return
    output.table(
        hosts,
        [
            ("NAME", lambda h: h["name"]),
            ("STATE", lambda h: h["state"]),
            ("URI", lambda h: h["uri"]),
            ("CPUS", lambda h: h["cpus"]),
            ("MEMORY", lambda h: output.mib(h["memory_mib"])),
            ("ACCEL", lambda h: h["accelerator"]),
            ("RATIOS cpu/ram/disk", lambda h: f"{h['cpu_ratio']:g}/{h['ram_ratio']:g}/{h['disk_ratio']:g}"),
        ],
    )


def _show_host(host: dict[str, Any], fmt: output.Format) -> None:
    if fmt is output.Format.json:
        output.emit_json(host)
        return
    output.details(
        [
            ("name", host["name"]),
            ("uri", host["uri"]),
            ("state", host["state"] + (f" ({host['state_reason']})" if host["state_reason"] else "")),
            ("hostname", host["hostname"]),
            ("CPUs", f"{host['cpus']} ({host['cpu_model']})"),
            ("memory", output.mib(host["memory_mib"])),
            ("disk", output.nbytes(host["disk_capacity_bytes"])),
            ("accelerator", host["accelerator"]),
            ("why", host["accelerator_reason"]),
            ("libvirt", host["libvirt_version"]),
            ("QEMU", host["hypervisor_version"]),
            ("overcommit", f"cpu {host['cpu_ratio']:g}, ram {host['ram_ratio']:g}, disk {host['disk_ratio']:g}"),
            (
                "allocated",
                f"{host['vcpus_allocated']} vCPUs, {output.mib(host['memory_mib_allocated'])} memory, "
                f"{output.nbytes(host['disk_bytes_allocated'])} disk",
            ),
            ("VMs", ", ".join(host["vms"]) or None),
            ("other guests", ", ".join(host["unmanaged_guests"]) or None),
            ("last seen", host["last_seen"]),
        ]
    )


@host_app.command("show")
def show_host(name: str = typer.Argument("local"), fmt: output.Format = OutputOpt) -> None:
    """Show a host: facts, the accelerator in use and why, what it holds."""
    _show_host(client().get(f"/hosts/{name}"), fmt)


@host_app.command("probe")
def probe_host(name: str = typer.Argument("local"), fmt: output.Format = OutputOpt) -> None:
    """Probe again whether KVM really runs guests on a host."""
    api = client()
    api.post(f"/hosts/{name}/probe")
    _show_host(api.get(f"/hosts/{name}"), fmt)


OPERATION_COLUMNS = [
    ("ID", lambda o: o["id"][:8]),
    ("KIND", lambda o: o["kind"]),
    ("TARGET", lambda o: o["target_name"]),
    ("STATUS", lambda o: o["status"]),
    ("PROGRESS", lambda o: f"{o['progress']}%"),
    ("DURATION", lambda o: f"{o['duration_seconds']:.1f}s" if o["duration_seconds"] is not None else None),
    ("CREATED", lambda o: o["created_at"][:19]),
    ("MESSAGE", lambda o: o["message"].splitlines()[0] if o["message"] else ""),
]


def _resolve(api: Any, operation_id: str) -> str:
    """Accept a unique prefix of an id, as shown by `operation list`."""
    if len(operation_id) >= 36:
        return operation_id
    matches = [o["id"] for o in api.get("/operations", limit=1000) if o["id"].startswith(operation_id)]
    return matches[0] if len(matches) == 1 else operation_id


def _show_operation(op: dict[str, Any], fmt: output.Format) -> None:
    if fmt is output.Format.json:
        output.emit_json(op)
        return
    output.details(
        [
            ("id", op["id"]),
            ("kind", op["kind"]),
            ("target", f"{op['target_kind']} {op['target_name']}"),
            ("status", op["status"]),
            ("progress", f"{op['progress']}%"),
            ("message", op["message"]),
            ("created", op["created_at"]),
            ("duration", f"{op['duration_seconds']:.2f} s" if op["duration_seconds"] else None),
            ("error", (op["error"] or {}).get("message")),
            ("result", op["result"] or None),
        ]
    )
    if op["steps"]:
        output.table(
            op["steps"],
            [
                ("STEP", lambda s: s["name"]),
                ("STATUS", lambda s: s["status"]),
                ("STARTED", lambda s: s["started_at"][11:23]),
                ("FINISHED", lambda s: (s["finished_at"] or "")[11:23]),
                ("DETAIL", lambda s: s["detail"]),
            ],
        )


@operation_app.command("list")
def list_operations(
    limit: int = typer.Option(20, "--limit"),
    target: str | None = typer.Option(None, "--target"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Recent operations, newest first."""
    ops = client().get("/operations", limit=limit, target=target)
    if fmt is output.Format.json:
        output.emit_json(ops)
    else:
        output.table(ops, OPERATION_COLUMNS)


@operation_app.command("show")
def show_operation(operation_id: str, fmt: output.Format = OutputOpt) -> None:
    """One operation with its steps."""
    api = client()
    _show_operation(api.get(f"/operations/{_resolve(api, operation_id)}"), fmt)


@operation_app.command("wait")
def wait_operation(operation_id: str, fmt: output.Format = OutputOpt) -> None:
    """Wait for an operation to finish; fails if it failed."""
    api = client()
    full = _resolve(api, operation_id)
    done = output.wait_with_progress(lambda update: api.wait(full, update), f"operation {full[:8]}")
    _show_operation(done, fmt)
