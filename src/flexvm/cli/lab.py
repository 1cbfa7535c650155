"""`flexvm lab up|status|down`: several hosts on this machine, registered with the server.

The lab itself (namespaces, daemons) is made here, in the CLI's process, as root; the server
only ever sees the hosts' URIs and the lab network, registered through its API like any other.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from flexvm.cli import output
from flexvm.cli.client import ApiClient
from flexvm.cli.common import OutputOpt, client
from flexvm.config import Settings
from flexvm.errors import Conflict, FlexvmError, NotFound
from flexvm.lab import Lab, LabSpec, LabState
from flexvm.lab.model import DEFAULT_SUBNET
from flexvm.lab.plan import SHARED_STORAGE_NAME

app = typer.Typer(
    help="A lab of several hosts on this machine, for trying and testing multi-host features.", no_args_is_help=True
)

LAB_NETWORK = "lab"
COLLECTIONS = {"network": "/networks", "host": "/hosts", "storage": "/storage"}


def _lab() -> Lab:
    return Lab(Settings.from_env().home / "lab")


def _register(
    api: ApiClient, state: LabState, cpus: int | None, memory: str | None, added: list[str], root: Path
) -> None:
    """The lab network (its DHCP reservations are flexvm's) and every lab host, with the capacity
    it advertises. ``added`` gets each thing as the server takes it (``network:lab``,
    ``host:lab1`` …), so a failure part-way can remove exactly those."""
    with contextlib.suppress(NotFound):  # a leftover from an earlier lab, with its old directory
        api.delete(f"/networks/{LAB_NETWORK}")
    api.post(
        "/networks",
        {
            "name": LAB_NETWORK,
            "subnet": state.subnet,
            "range_start": state.dhcp_range[0],
            "range_end": state.dhcp_range[1],
            "gateway": state.gateway,
            "dhcp_hosts_dir": str(state.dhcp_hosts_dir),
        },
    )
    added.append(f"network:{LAB_NETWORK}")
    for host in state.hosts:
        body: dict[str, Any] = {
            "name": host.name,
            "uri": host.uri,
            "network": LAB_NETWORK,
            "bridge": host.bridge,
            # The lab's power switch fences it: a failed lab host's HA VMs start on the others.
            "fence_agent": "lab",
            "fence_options": {"root": str(root), "host": host.name},
        }
        if cpus is not None:
            body["cpus"] = cpus
        if memory is not None:
            body["memory"] = memory
        operation = api.post("/hosts", body)
        added.append(f"host:{host.name}")  # accepted: it may be registered even if waiting fails
        done = _wait(api, operation, f"registering {host.name}")
        output.console.print(f"  {host.name}: {host.uri} ({done['result'].get('accelerator', '?')})")
    if state.shared_path is not None:
        with contextlib.suppress(NotFound):  # a leftover from an earlier lab
            api.delete(f"/storage/{SHARED_STORAGE_NAME}")
        api.post("/storage", {"name": SHARED_STORAGE_NAME, "path": state.shared_path})
        added.append(f"storage:{SHARED_STORAGE_NAME}")
        output.console.print(f"  storage {SHARED_STORAGE_NAME}: {state.shared_path} on every host ({state.shared_how})")


def _remove_added(api: ApiClient, added: list[str]) -> None:
    """Undo ``_register``'s additions, newest first (hosts before the network they join)."""
    for item in reversed(added):
        kind, name = item.split(":", 1)
        with contextlib.suppress(NotFound):
            api.delete(f"{COLLECTIONS[kind]}/{name}")


def _wait(api: ApiClient, operation: dict[str, Any], label: str) -> dict[str, Any]:
    return output.wait_with_progress(lambda update: api.wait(operation["id"], update), label)


def _lab_vms(api: ApiClient, state: LabState) -> list[str]:
    names = {h.name for h in state.hosts}
    return [vm["name"] for vm in api.get("/vms") if vm["host"] in names or vm["disk_host"] in names]


def _unregister(api: ApiClient, state: LabState) -> None:
    if state.shared_path is not None:
        with contextlib.suppress(NotFound):
            api.delete(f"/storage/{SHARED_STORAGE_NAME}")
    for host in state.hosts:
        with contextlib.suppress(NotFound):
            api.delete(f"/hosts/{host.name}")
    with contextlib.suppress(NotFound):
        api.delete(f"/networks/{LAB_NETWORK}")


@app.command("up")
def up(
    hosts: int = typer.Option(2, "--hosts", help="how many hosts (1-8)"),
    host_cpus: int | None = typer.Option(None, "--host-cpus", help="CPUs each host advertises to the pool"),
    host_memory: str | None = typer.Option(None, "--host-memory", help="memory each host advertises, e.g. 4G"),
    subnet: str = typer.Option(DEFAULT_SUBNET, "--subnet", help="the lab network (private, unused here)"),
    shared_storage: bool = typer.Option(
        False, "--shared-storage", help=f"a directory every host shares, added as storage '{SHARED_STORAGE_NAME}'"
    ),
    fmt: output.Format = OutputOpt,
) -> None:
    """Start N lab hosts, each with its own libvirtd, and add them to the pool."""
    api = client()
    api.get("/hosts")  # the server must be there before anything is built for it
    lab = _lab()
    # On failure it removes what it made itself.
    state = lab.up(LabSpec(hosts=hosts, subnet=subnet, shared_storage=shared_storage))
    output.console.print(
        f"lab up: {len(state.hosts)} hosts on {state.subnet} (this machine reaches it as {state.gateway})"
    )
    added: list[str] = []
    try:
        _register(api, state, host_cpus, host_memory, added, lab.root)
    except (FlexvmError, KeyboardInterrupt) as err:
        output.err_console.print("registering the lab hosts failed; removing them and taking the lab down again")
        try:
            _remove_added(api, added)
        except FlexvmError as cleanup:  # the first failure stays the story
            err.add_note(f"removing the lab's hosts from the server failed too: {cleanup.message}")
        finally:
            lab.down()  # even when the server cannot be asked any more
        raise
    status(fmt)


@app.command("status")
def status(fmt: output.Format = OutputOpt) -> None:
    """The lab's hosts: alive or not here, and their state in the pool."""
    state = _lab().status()
    if state is None:
        if fmt is output.Format.json:
            output.emit_json(None)
        else:
            output.console.print("no lab is up (start one with `flexvm lab up --hosts 2`)")
        return
    try:
        pool = {h["name"]: h for h in client().get("/hosts")}
    except FlexvmError:
        pool = {}
    rows = [
        {
            "name": h.name,
            "address": h.address,
            "uri": h.uri,
            "alive": h.alive,
            "pool_state": pool.get(h.name, {}).get("state", "not registered"),
        }
        for h in state.hosts
    ]
    if fmt is output.Format.json:
        output.emit_json(
            {
                "subnet": state.subnet,
                "gateway": state.gateway,
                "phase": state.phase,
                "hosts": rows,
                "shared_storage": state.shared_path and {"path": state.shared_path, "how": state.shared_how},
            }
        )
        return
    output.console.print(
        f"lab on {state.subnet}, gateway {state.gateway}, guests get "
        f"{state.dhcp_range[0]}-{state.dhcp_range[1]} ({state.phase})"
    )
    if state.shared_path is not None:
        output.console.print(f"shared storage {SHARED_STORAGE_NAME} at {state.shared_path}: {state.shared_how}")
    output.table(
        rows,
        [
            ("HOST", lambda r: r["name"]),
            ("ADDRESS", lambda r: r["address"]),
            ("LIBVIRTD", lambda r: "running" if r["alive"] else "not running"),
            ("IN THE POOL", lambda r: r["pool_state"]),
            ("URI", lambda r: r["uri"]),
        ],
    )


@app.command("down")
def down(force: bool = typer.Option(False, "--force", help="delete the VMs still on lab hosts first")) -> None:
    """Remove the lab hosts from the pool and everything the lab made on this machine."""
    lab = _lab()
    state = lab.status()
    if state is None:
        output.console.print("no lab is up")
        lab.down()  # tidies a half-made lab, if any
        return
    try:
        api: ApiClient | None = client()
        vms = _lab_vms(api, state) if api is not None else []
    except FlexvmError as err:
        output.err_console.print(f"note: the server cannot be asked about the lab's VMs ({err.message})")
        api, vms = None, []
    if vms and not force:
        raise Conflict(
            f"VMs still on lab hosts: {', '.join(vms)}; delete them or use `flexvm lab down --force`",
            details={"vms": vms},
        )
    if api is not None:
        for name in vms:
            operation = api.delete(f"/vms/{name}")
            _wait(api, operation, f"deleting {name}")
        _unregister(api, state)
    lab.down()
    output.console.print("lab down: its hosts, namespaces, daemons and files are gone")


host_app = typer.Typer(
    help="A lab host's power, network and hypervisor, to see failures handled.", no_args_is_help=True
)
app.add_typer(host_app, name="host")


@host_app.command("kill")
def kill_host(name: str) -> None:
    """Power the host off: its libvirtd, virtlogd and every guest in it are killed at once."""
    killed = _lab().power_off(name)
    output.console.print(f"lab host {name} is off: {len(killed)} processes killed")


@host_app.command("start")
def start_host(name: str) -> None:
    """Power the host on again: its daemons start (its guests do not: they were killed)."""
    _lab().start_host(name)
    output.console.print(f"lab host {name} is on: its libvirtd answers")


@host_app.command("restart")
def restart_host(name: str) -> None:
    """Restart the host's libvirtd and virtlogd, as a hypervisor update does; guests keep running."""
    _lab().restart_hypervisor(name)
    output.console.print(f"lab host {name}: libvirtd and virtlogd restarted, its guests still run")


@host_app.command("partition")
def partition_host(name: str) -> None:
    """Cut the host off the lab network: it and its guests run on, unreachable."""
    _lab().partition(name)
    output.console.print(f"lab host {name} is cut off the lab network")


@host_app.command("heal")
def heal_host(name: str) -> None:
    """Put the host back on the lab network."""
    _lab().heal(name)
    output.console.print(f"lab host {name} is back on the lab network")
