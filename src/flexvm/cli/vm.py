"""`flexvm vm …`"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from flexvm.cli import output
from flexvm.cli.common import OutputOpt, client, finish, read_user_data
from flexvm.errors import FlexvmError

app = typer.Typer(help="Create, run, change and remove VMs.", no_args_is_help=True)

NoWait = typer.Option(False, "--no-wait", help="Return at once with the operation instead of waiting.")

VM_COLUMNS = [
    ("NAME", lambda v: v["name"]),
    ("SIZE", lambda v: v["size"]),
    ("IMAGE", lambda v: v["image"]),
    ("HOST", lambda v: v["host"] or (f"({v['disk_host']})" if v["disk_host"] else None)),
    ("POWER", lambda v: v["power_state"]),
    ("PROVISIONING", lambda v: v["provisioning_state"]),
    ("IP", lambda v: ", ".join(n["ip"] for n in v["nics"] if n["ip"]) or None),
    ("BOOT", lambda v: f"{v['boot_seconds']:.1f}s" if v["boot_seconds"] is not None else None),
]


def show_vm(vm: dict[str, Any], fmt: output.Format) -> None:
    if fmt is output.Format.json:
        output.emit_json(vm)
        return
    output.details(
        [
            ("name", vm["name"]),
            ("id", vm["id"]),
            ("size", f"{vm['size']} ({vm['vcpus']} vCPU, {output.mib(vm['memory_mib'])})"),
            ("image", vm["image"]),
            ("host", vm["host"]),
            ("disk host", vm["disk_host"] if not vm.get("storage") else f"shared storage {vm['storage']}"),
            ("power state", vm["power_state"]),
            ("provisioning", vm["provisioning_state"]),
            ("OS disk", output.nbytes(vm["disk_bytes"])),
            ("address", ", ".join(n["ip"] for n in vm["nics"] if n["ip"]) or None),
            ("NICs", ", ".join(f"{n['network']} {n['mac']}" for n in vm["nics"])),
            ("created", vm["created_at"]),
            ("ready at", vm["ready_at"]),
            ("boot", f"{vm['boot_seconds']:.2f} s to ready" if vm["boot_seconds"] is not None else None),
            ("HA", _ha(vm)),
            ("unavailable", vm.get("unavailable")),
            ("operation", vm["active_operation_id"]),
            ("error", vm["error"]),
        ]
    )


def _ha(vm: dict[str, Any]) -> str:
    if not vm.get("ha"):
        return "off"
    return f"on, priority {vm.get('ha_priority', 0)} (started on another host if its own fails)"


def _act(
    name: str, path: str, label: str, no_wait: bool, fmt: output.Format, body: dict[str, Any] | None = None
) -> None:
    api = client()
    operation = api.post(path, body)
    finish(api, operation, label, no_wait, fmt, show=lambda: show_vm(api.get(f"/vms/{name}"), fmt))


@app.command("create")
def create(
    name: str,
    size: str = typer.Option(..., "--size", "-s", help="e.g. Standard_B1s; see `flexvm size list`"),
    image: str = typer.Option(..., "--image", "-i", help="e.g. tiny; see `flexvm image list`"),
    user_data: Path | None = typer.Option(None, "--user-data", help="cloud-init user data file (cloud images)"),
    host: str | None = typer.Option(None, "--host", help="pin to this host"),
    availability_set: str | None = typer.Option(None, "--availability-set", help="spread with this set's VMs"),
    policy: str = typer.Option("best-fit", "--policy", help="best-fit (pack, the default) or spread"),
    max_size: str | None = typer.Option(
        None, "--max-size", help="grow to this without a restart (default: family's largest)"
    ),
    storage: str | None = typer.Option(
        None, "--storage", help="keep its disks on this shared storage (see `flexvm storage list`)"
    ),
    ha: bool = typer.Option(False, "--ha", help="start it on another host if its own fails (needs --storage)"),
    ha_priority: int = typer.Option(0, "--ha-priority", help="0-1000: higher ones are restarted first"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Create a VM and wait until the guest says it is ready."""
    body: dict[str, Any] = {
        "name": name,
        "size": size,
        "image": image,
        "host": host,
        "availability_set": availability_set,
        "policy": policy,
        "max_size": max_size,
    }
    if storage is not None:
        body["storage"] = storage
    if ha or ha_priority:
        body.update(ha=ha, ha_priority=ha_priority)
    if user_data is not None:
        body["user_data"] = read_user_data(user_data)
    api = client()
    operation = api.post("/vms", body)

    def shown() -> None:
        vm = api.get(f"/vms/{name}")
        show_vm(vm, fmt)
        if fmt is output.Format.table and vm["boot_seconds"] is not None:
            output.console.print(
                f"[green]{name} is ready[/] {vm['boot_seconds']:.1f} s after power-on "
                f"({operation_seconds(api, operation['id']):.1f} s in all)"
            )

    finish(api, operation, f"creating {name}", no_wait, fmt, show=shown)


def operation_seconds(api: Any, operation_id: str) -> float:
    return float(api.get(f"/operations/{operation_id}")["duration_seconds"] or 0.0)


@app.command("list")
def list_vms(fmt: output.Format = OutputOpt) -> None:
    """List VMs."""
    vms = client().get("/vms")
    if fmt is output.Format.json:
        output.emit_json(vms)
    else:
        output.table(vms, VM_COLUMNS)


@app.command("update")
def update(
    name: str,
    ha: bool | None = typer.Option(None, "--ha/--no-ha", help="start it on another host if its own fails"),
    ha_priority: int | None = typer.Option(None, "--ha-priority", help="0-1000: higher ones are restarted first"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Change what a VM's record says of it: high availability and its priority."""
    body = {k: v for k, v in {"ha": ha, "ha_priority": ha_priority}.items() if v is not None}
    if not body:
        raise FlexvmError("nothing to change: give --ha, --no-ha or --ha-priority")
    show_vm(client().request("PATCH", f"/vms/{name}", json=body), fmt)


@app.command("show")
def show(name: str, fmt: output.Format = OutputOpt) -> None:
    """Show one VM."""
    show_vm(client().get(f"/vms/{name}"), fmt)


@app.command("start")
def start(name: str, no_wait: bool = NoWait, fmt: output.Format = OutputOpt) -> None:
    """Power on a stopped or deallocated VM and wait until it is ready."""
    _act(name, f"/vms/{name}/start", f"starting {name}", no_wait, fmt)


@app.command("stop")
def stop(
    name: str,
    force: bool = typer.Option(False, "--force", help="pull the power instead of asking the guest"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Stop a VM: ACPI shutdown, then the power is pulled after the timeout. Keeps its host claim."""
    _act(name, f"/vms/{name}/stop", f"stopping {name}", no_wait, fmt, {"force": force})


@app.command("restart")
def restart(name: str, no_wait: bool = NoWait, fmt: output.Format = OutputOpt) -> None:
    """Stop (gracefully) and start a VM."""
    _act(name, f"/vms/{name}/restart", f"restarting {name}", no_wait, fmt)


@app.command("deallocate")
def deallocate(name: str, no_wait: bool = NoWait, fmt: output.Format = OutputOpt) -> None:
    """Stop a VM and free its host's CPU and memory; the disk is kept."""
    _act(name, f"/vms/{name}/deallocate", f"deallocating {name}", no_wait, fmt)


@app.command("delete")
def delete(name: str, no_wait: bool = NoWait, fmt: output.Format = OutputOpt) -> None:
    """Delete a VM with its disks."""
    api = client()
    operation = api.delete(f"/vms/{name}")
    finish(
        api,
        operation,
        f"deleting {name}",
        no_wait,
        fmt,
        show=lambda: output.console.print(f"deleted {name}") if fmt is output.Format.table else None,
    )


@app.command("console")
def console(
    name: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new output"),
    tail: int = typer.Option(0, "--tail", "-n", help="only the last N lines (0: all)"),
) -> None:
    """Print the serial console log (every boot of the VM)."""
    api = client()
    chunk = api.get(f"/vms/{name}/console", offset=0)
    text = chunk["text"]
    if tail > 0:
        text = "\n".join(text.splitlines()[-tail:]) + ("\n" if text.endswith("\n") else "")
    typer.echo(text, nl=False)
    offset = chunk["next_offset"]
    while follow:
        time.sleep(0.5)
        chunk = api.get(f"/vms/{name}/console", offset=offset)
        if chunk["text"]:
            typer.echo(chunk["text"], nl=False)
        offset = chunk["next_offset"]


disk_app = typer.Typer(help="The VM's OS disk.", no_args_is_help=True)
app.add_typer(disk_app, name="disk")


@disk_app.command("resize")
def resize_disk(
    name: str,
    size: str = typer.Option(..., "--size", help="new size, e.g. 8G (disks only grow)"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Grow a VM's OS disk, online if it is running."""
    _act(name, f"/vms/{name}/disk/resize", f"growing the disk of {name}", no_wait, fmt, {"size": size})


@app.command("resize")
def resize(
    name: str,
    size: str = typer.Option(..., "--size", "-s", help="the new size"),
    allow_restart: bool = typer.Option(False, "--allow-restart", help="restart if it cannot be done live"),
    force: bool = typer.Option(False, "--force", help="shrink memory even if the guest is using it"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, change nothing"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Resize by the least disruptive path: hot, move then hot, or (with --allow-restart) restart."""
    api = client()
    body = {"size": size, "allow_restart": allow_restart, "force": force, "dry_run": dry_run}
    if dry_run:
        plan = api.post(f"/vms/{name}/resize", body)
        if fmt is output.Format.json:
            output.emit_json(plan)
            return
        where = f" via {plan['destination']}" if plan["destination"] else ""
        output.console.print(
            f"resize {name}: {plan['current']} -> {plan['target']}, path [bold]{plan['path']}[/]{where} "
            f"(about {plan['estimate_seconds']:.0f} s)"
        )
        for number, step in enumerate(plan["steps"], 1):
            output.console.print(f"  {number}. {step}")
        for warning in plan["warnings"]:
            output.console.print(f"  [yellow]note:[/] {warning}")
        return
    operation = api.post(f"/vms/{name}/resize", body)

    def shown() -> None:
        done = api.get(f"/operations/{operation['id']}")
        if fmt is output.Format.table:
            result = done["result"]
            output.console.print(
                f"{name} is now {size} (path {result.get('path')}"
                + (", restarted" if result.get("restarted") else ", no restart")
                + ")"
            )
        show_vm(api.get(f"/vms/{name}"), fmt)

    finish(api, operation, f"resizing {name}", no_wait, fmt, show=shown)


@app.command("migrate")
def migrate(
    name: str,
    to: str | None = typer.Option(None, "--to", help="destination host (default: the scheduler's choice)"),
    cold: bool = typer.Option(False, "--cold", help="stop, move the files, start there"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, change nothing"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Move a VM to another host: live with its disks, or cold; stopped VMs move their files."""
    api = client()
    body = {"to": to, "cold": cold, "dry_run": dry_run}
    if dry_run:
        plan = api.post(f"/vms/{name}/migrate", body)
        if fmt is output.Format.json:
            output.emit_json(plan)
            return
        output.console.print(
            f"migrate {name}: {plan['source']} -> {plan['destination']} ({plan['mode']}, "
            f"about {plan['estimate_seconds']:.0f} s)"
        )
        for note in plan["notes"]:
            output.console.print(f"  note: {note}")
        return
    operation = api.post(f"/vms/{name}/migrate", body)

    def shown() -> None:
        done = api.get(f"/operations/{operation['id']}")
        result = done["result"]
        if fmt is output.Format.table:
            downtime = result.get("downtime_ms")
            output.console.print(
                f"{name} moved {result.get('from')} -> {result.get('to')} ({result.get('mode')}) in "
                f"{result.get('total_seconds', 0):.1f} s"
                + (f", {downtime:.0f} ms of downtime" if downtime is not None else "")
            )
        show_vm(api.get(f"/vms/{name}"), fmt)

    finish(api, operation, f"migrating {name}", no_wait, fmt, show=shown)


@app.command("snapshot")
def snapshot(
    name: str,
    snapshot_name: str | None = typer.Option(None, "--name", help="default: snap-<date>-<time>"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Snapshot a VM's disk (and its memory, if it runs: the guest pauses while it is saved)."""
    api = client()
    operation = api.post(f"/vms/{name}/snapshots", {"name": snapshot_name})

    def shown() -> None:
        if fmt is output.Format.table:
            made = api.get(f"/operations/{operation['id']}")["result"].get("snapshot")
            output.console.print(f"snapshot {made} of {name}")

    finish(api, operation, f"snapshotting {name}", no_wait, fmt, show=shown)


@app.command("snapshots")
def snapshots(name: str, fmt: output.Format = OutputOpt) -> None:
    """List a VM's snapshots, oldest first."""
    names = client().get(f"/vms/{name}/snapshots")
    if fmt is output.Format.json:
        output.emit_json(names)
    else:
        for item in names:
            output.console.print(item)


@app.command("revert")
def revert(name: str, snapshot_name: str, no_wait: bool = NoWait, fmt: output.Format = OutputOpt) -> None:
    """Take a VM back to one of its snapshots."""
    _act(name, f"/vms/{name}/snapshots/{snapshot_name}/revert", f"reverting {name}", no_wait, fmt)


@app.command("snapshot-delete")
def snapshot_delete(name: str, snapshot_name: str, no_wait: bool = NoWait, fmt: output.Format = OutputOpt) -> None:
    """Delete one of a VM's snapshots."""
    api = client()
    operation = api.delete(f"/vms/{name}/snapshots/{snapshot_name}")
    finish(api, operation, f"deleting snapshot {snapshot_name}", no_wait, fmt)


@app.command("capture")
def capture(
    name: str,
    image: str = typer.Option(..., "--image", help="name of the new image"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Make a new image from a stopped VM's disk."""
    api = client()
    operation = api.post(f"/vms/{name}/capture", {"image": image})
    finish(
        api,
        operation,
        f"capturing {name}",
        no_wait,
        fmt,
        show=lambda: (
            output.console.print(f"image {image} captured from {name}") if fmt is output.Format.table else None
        ),
    )


@app.command("export")
def export(
    name: str,
    file: Path = typer.Argument(..., help="where to write it"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Write a stopped VM to one file (manifest, its disk flattened, the image's kernel and initrd)."""
    api = client()
    operation = api.post(f"/vms/{name}/export", {"file": str(file.resolve())})
    finish(
        api,
        operation,
        f"exporting {name}",
        no_wait,
        fmt,
        show=lambda: (
            output.console.print(f"exported {name} to {file.resolve()}") if fmt is output.Format.table else None
        ),
    )


@app.command("import")
def import_vm(
    file: Path = typer.Argument(..., help="a file written by `flexvm vm export`"),
    name: str | None = typer.Option(None, "--name", help="default: the exported VM's name"),
    size: str | None = typer.Option(None, "--size", help="default: the exported VM's size"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Make a VM from an export; it boots from the disk exactly as exported."""
    api = client()
    operation = api.post("/vms/import", {"file": str(file.resolve()), "name": name, "size": size})
    target = operation["target_name"]
    finish(api, operation, f"importing {target}", no_wait, fmt, show=lambda: show_vm(api.get(f"/vms/{target}"), fmt))
