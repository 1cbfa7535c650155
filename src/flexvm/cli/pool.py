"""`flexvm network …`, `flexvm availability-set …` and `flexvm capacity`."""

from __future__ import annotations

from typing import Any

import typer

from flexvm.cli import output
from flexvm.cli.common import OutputOpt, client

network_app = typer.Typer(help="Networks guests bridge onto, with addresses flexvm reserves.", no_args_is_help=True)
set_app = typer.Typer(help="Availability sets: VMs spread over fault domains.", no_args_is_help=True)


@network_app.command("list")
def list_networks(fmt: output.Format = OutputOpt) -> None:
    """List networks."""
    networks = client().get("/networks")
    if fmt is output.Format.json:
        output.emit_json(networks)
        return
    output.table(
        networks,
        [
            ("NAME", lambda n: n["name"]),
            ("SUBNET", lambda n: n["subnet"]),
            ("RANGE", lambda n: f"{n['range_start']}-{n['range_end']}"),
            ("GATEWAY", lambda n: n["gateway"]),
            ("DHCP", lambda n: "flexvm reservations" if n["dhcp_hosts_dir"] else "external"),
            ("PROJECTS", lambda n: "isolated" if n["isolated"] else "not isolated (external DHCP)"),
        ],
    )


@network_app.command("create")
def create_network(
    name: str,
    subnet: str = typer.Option(..., "--subnet", help="e.g. 10.213.0.0/24"),
    range_start: str = typer.Option(..., "--range-start"),
    range_end: str = typer.Option(..., "--range-end"),
    gateway: str | None = typer.Option(None, "--gateway"),
    dhcp_hosts_dir: str | None = typer.Option(
        None, "--dhcp-hosts-dir", help="where the network's dnsmasq reads reservations"
    ),
    fmt: output.Format = OutputOpt,
) -> None:
    """Define a network (the lab makes its own)."""
    network = client().post(
        "/networks",
        {
            "name": name,
            "subnet": subnet,
            "range_start": range_start,
            "range_end": range_end,
            "gateway": gateway,
            "dhcp_hosts_dir": dhcp_hosts_dir,
        },
    )
    if fmt is output.Format.json:
        output.emit_json(network)
    else:
        output.console.print(f"network {name}: {subnet}, guests get {range_start}-{range_end}")


@network_app.command("delete")
def delete_network(name: str) -> None:
    """Delete a network no host or VM uses."""
    client().delete(f"/networks/{name}")
    output.console.print(f"deleted network {name}")


def _draw_set(item: dict[str, Any]) -> None:
    """The set as a tree: fault domain, then host, then VMs."""
    from rich.tree import Tree

    tree = Tree(f"[bold]{item['name']}[/] — {item['fault_domains']} fault domains")
    if not item["layout"]:
        tree.add("(no VMs yet)")
    for domain, hosts in sorted(item["layout"].items()):
        count = sum(len(vms) for vms in hosts.values())
        branch = tree.add(f"fault domain [cyan]{domain}[/] ({count} VM{'s' if count != 1 else ''})")
        for host, vms in sorted(hosts.items()):
            branch.add(f"host {host}: {', '.join(vms)}")
    output.console.print(tree)


@set_app.command("create")
def create_set(
    name: str,
    fault_domains: int = typer.Option(2, "--fault-domains", help="spread over this many"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Create an availability set; create VMs in it with `vm create --availability-set`."""
    item = client().post("/availability-sets", {"name": name, "fault_domains": fault_domains})
    if fmt is output.Format.json:
        output.emit_json(item)
    else:
        output.console.print(f"availability set {name}: {fault_domains} fault domains")


@set_app.command("list")
def list_sets(fmt: output.Format = OutputOpt) -> None:
    """List availability sets."""
    sets = client().get("/availability-sets")
    if fmt is output.Format.json:
        output.emit_json(sets)
        return
    output.table(
        sets,
        [
            ("NAME", lambda s: s["name"]),
            ("FAULT DOMAINS", lambda s: s["fault_domains"]),
            ("VMS", lambda s: sum(len(v) for hosts in s["layout"].values() for v in hosts.values())),
        ],
    )


@set_app.command("show")
def show_set(name: str, fmt: output.Format = OutputOpt) -> None:
    """Draw which VM sits in which fault domain and on which host."""
    item = client().get(f"/availability-sets/{name}")
    if fmt is output.Format.json:
        output.emit_json(item)
    else:
        _draw_set(item)


@set_app.command("delete")
def delete_set(name: str) -> None:
    """Delete an empty availability set."""
    client().delete(f"/availability-sets/{name}")
    output.console.print(f"deleted availability set {name}")


def capacity(
    what_if: str | None = typer.Option(None, "--what-if", help="would this batch fit? e.g. 'Standard_B2s=20'"),
    failure: bool = typer.Option(False, "--failure", help="does the pool survive losing its busiest host?"),
    host: str | None = typer.Option(None, "--host", help="with --failure: lose this host instead"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Physical vs allocated per host and in total, the overcommit in force, and what still fits."""
    api = client()
    if what_if is not None:
        _what_if(api.get("/capacity/what-if", batch=what_if), fmt)
        return
    if failure:
        _failure(api.get("/capacity/failure", host=host), fmt)
        return
    report = api.get("/capacity")
    if fmt is output.Format.json:
        output.emit_json(report)
        return
    hosts = report["hosts"]
    output.table(
        hosts,
        [
            ("HOST", lambda h: h["name"]),
            ("STATE", lambda h: h["state"]),
            ("vCPU alloc/eff (phys)", lambda h: f"{h['vcpus_allocated']}/{h['vcpus_total']} ({h['physical_cpus']})"),
            (
                "MEMORY alloc/eff",
                lambda h: f"{output.mib(h['memory_mib_allocated'])}/{output.mib(h['memory_mib_total'])}",
            ),
            (
                "DISK alloc/eff",
                lambda h: f"{output.nbytes(h['disk_bytes_allocated'])}/{output.nbytes(h['disk_bytes_total'])}",
            ),
            ("RATIOS cpu/ram/disk", lambda h: f"{h['cpu_ratio']:g}/{h['ram_ratio']:g}/{h['disk_ratio']:g}"),
        ],
        title="Hosts",
    )
    totals = {
        "vcpus": (sum(h["vcpus_allocated"] for h in hosts), sum(h["vcpus_total"] for h in hosts)),
        "memory": (sum(h["memory_mib_allocated"] for h in hosts), sum(h["memory_mib_total"] for h in hosts)),
        "disk": (sum(h["disk_bytes_allocated"] for h in hosts), sum(h["disk_bytes_total"] for h in hosts)),
    }
    vcpus, memory, disk = totals["vcpus"], totals["memory"], totals["disk"]
    output.console.print(
        f"pool: {vcpus[0]}/{vcpus[1]} vCPUs, {output.mib(memory[0])}/{output.mib(memory[1])} memory, "
        f"{output.nbytes(disk[0])}/{output.nbytes(disk[1])} disk allocated"
    )
    sizes = list(report["fits"])
    rows = [{"size": s, **{h["name"]: h["fits"][s] for h in hosts}, "total": report["fits"][s]} for s in sizes]
    output.table(
        rows,
        [("SIZE", lambda r: r["size"])]
        + [(h["name"], lambda r, n=h["name"]: r[n]) for h in hosts]
        + [("TOTAL", lambda r: r["total"])],
        title="How many more fit now",
    )


def _what_if(results: list[dict[str, Any]], fmt: output.Format) -> None:
    if fmt is output.Format.json:
        output.emit_json(results)
        return
    for item in results:
        where = ", ".join(f"{host}: {n}" for host, n in sorted(item["placed"].items())) or "nowhere"
        placed = sum(item["placed"].values())
        if item["fits"]:
            output.console.print(f"[green]fits[/]: {item['requested']} x {item['size']} -> {where}")
        else:
            output.console.print(
                f"[red]does not fit[/]: only {placed} of {item['requested']} x {item['size']} "
                f"({where}); then: {item['first_failure']}"
            )


def _failure(result: dict[str, Any], fmt: output.Format) -> None:
    if fmt is output.Format.json:
        output.emit_json(result)
        return
    if result["lost_host"] is None:
        output.console.print("no host is up: nothing to lose")
        return
    verdict = "[green]survives[/]" if result["survives"] else "[red]does not survive[/]"
    output.console.print(f"losing {result['lost_host']}: the pool {verdict}")
    for vm, host in sorted(result["moved"].items()):
        output.console.print(f"  {vm} -> {host}")
    for vm, why in sorted(result["homeless"].items()):
        output.console.print(f"  [red]{vm} would be homeless[/]: {why}")
