"""`flexvm host …`, `flexvm operation …` and `flexvm server …`"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import typer

from flexvm.cli import output
from flexvm.cli.common import OutputOpt, client, finish
from flexvm.errors import FlexvmError

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
            ("CPUs", f"{host['cpus']} ({host['cpu_model']})" + _advertised(host["advertised_cpus"], str)),
            ("memory", output.mib(host["memory_mib"]) + _advertised(host["advertised_memory_mib"], output.mib)),
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
            ("fault domain", host["fault_domain"] or host["name"]),
            ("network", f"{host['network']} via {host['bridge']}" if host["network"] else "QEMU user networking"),
            ("VMs", ", ".join(host["vms"]) or None),
            ("other guests", ", ".join(host["unmanaged_guests"]) or None),
            ("leftovers", ", ".join(host["leftovers"]) or None),
            ("last seen", host["last_seen"]),
            ("fence agent", _agent(host)),
            ("suspect since", host.get("suspect_since")),
            *_failure_story(host.get("last_fence")),
        ]
    )


def _agent(host: dict[str, Any]) -> str:
    agent = host.get("fence_agent", "none")
    if agent == "none":
        return "none (a host that stops answering is marked down; its VMs are not started elsewhere)"
    options = ", ".join(f"{k}={v}" for k, v in sorted(host.get("fence_options", {}).items()))
    return f"{agent} ({options})" if options else agent


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _failure_story(fence: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The last failure as a timeline: detected, failed, fenced, each VM started where and when."""
    if not fence:
        return []
    result, params = fence.get("result") or {}, fence.get("params") or {}
    detected = _at(result.get("detected_at") or params.get("detected_at"))

    def after(text: str | None) -> str:
        at = _at(text)
        if at is None:
            return "-"
        return at.isoformat(timespec="seconds") + (f" (+{(at - detected).total_seconds():.1f} s)" if detected else "")

    rows: list[tuple[str, Any]] = [
        ("last failure", f"detected {detected.isoformat(timespec='seconds') if detected else '-'}"),
        ("  failed", after(result.get("failed_at") or params.get("failed_at"))),
    ]
    if fence["status"] == "failed":
        rows.append(("  fence", f"failed: {(fence.get('error') or {}).get('message', '?')}"))
        return rows
    if fence["status"] != "succeeded":
        rows.append(("  fence", f"{fence['status']}: {fence.get('message', '')}"))
        return rows
    rows.append(("  fenced", f"{after(result.get('fenced_at'))}: {result.get('fence', '')}"))
    for entry in result.get("restarted", []):
        if entry.get("operation"):
            how = f"on {entry.get('to')} at {after(entry.get('at'))}, {entry.get('status')}"
            if entry.get("error"):
                how += f": {entry['error']}"
        else:
            how = f"not restarted: {entry.get('skipped')}"
        rows.append((f"  {entry.get('vm')}", how))
    for vm, why in (result.get("unavailable") or {}).items():
        rows.append((f"  {vm}", f"waits: {why}"))
    return rows


def _advertised(value: int | None, show: Any) -> str:
    return f" (advertises {show(value)} to the pool)" if value is not None else ""


def _settings(
    cpu_ratio: float | None,
    ram_ratio: float | None,
    disk_ratio: float | None,
    fault_domain: str | None,
    cpus: int | None,
    memory: str | None,
    reserved_memory: str | None,
    network: str | None,
    bridge: str | None,
    fence_agent: str | None = None,
    fence_options: list[str] | None = None,
) -> dict[str, Any]:
    given: dict[str, Any] = {
        "cpu_ratio": cpu_ratio,
        "ram_ratio": ram_ratio,
        "disk_ratio": disk_ratio,
        "fault_domain": fault_domain,
        "cpus": cpus,
        "memory": memory,
        "reserved_memory": reserved_memory,
        "network": network,
        "bridge": bridge,
        "fence_agent": fence_agent,
        "fence_options": _options(fence_options) if fence_options else None,
    }
    return {k: v for k, v in given.items() if v is not None}


def _options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise FlexvmError(f"--fence-option takes KEY=VALUE (got {pair!r})")
        options[key] = value
    return options


CpuRatio = typer.Option(None, "--cpu-ratio", help="vCPUs per physical CPU (default 4)")
RamRatio = typer.Option(None, "--ram-ratio", help="memory overcommit (default 1.0)")
DiskRatio = typer.Option(None, "--disk-ratio", help="disk overcommit for thin overlays (default 1.0)")
FaultDomain = typer.Option(None, "--fault-domain", help="group of hosts that fail together (default: the host)")
Cpus = typer.Option(None, "--cpus", help="CPUs to advertise instead of what libvirt counts")
Memory = typer.Option(None, "--memory", help="memory to advertise, e.g. 8G")
Reserved = typer.Option(None, "--reserved-memory", help="memory kept for the host itself (default 512M)")
Network = typer.Option(None, "--network", help="flexvm network guests on this host join")
Bridge = typer.Option(None, "--bridge", help="the host's bridge onto that network")
Agent = typer.Option(None, "--fence-agent", help="none, lab, ipmi or manual: what powers it off when it fails")
AgentOptions = typer.Option(
    None, "--fence-option", help="KEY=VALUE for the agent (ipmi: address, user, password_file, interface)"
)


@host_app.command("add")
def add_host(
    name: str,
    uri: str = typer.Option(..., "--uri", help="libvirt URI, e.g. qemu+tcp://10.0.0.2/system"),
    cpu_ratio: float | None = CpuRatio,
    ram_ratio: float | None = RamRatio,
    disk_ratio: float | None = DiskRatio,
    fault_domain: str | None = FaultDomain,
    cpus: int | None = Cpus,
    memory: str | None = Memory,
    reserved_memory: str | None = Reserved,
    network: str | None = Network,
    bridge: str | None = Bridge,
    fence_agent: str | None = Agent,
    fence_option: list[str] | None = AgentOptions,
    fmt: output.Format = OutputOpt,
) -> None:
    """Add a host to the pool: facts from libvirt, KVM proved or TCG chosen."""
    api = client()
    settings = _settings(
        cpu_ratio, ram_ratio, disk_ratio, fault_domain, cpus, memory, reserved_memory, network, bridge,
        fence_agent, fence_option,
    )  # fmt: skip
    body = {"name": name, "uri": uri, **settings}
    operation = api.post("/hosts", body)
    finish(api, operation, f"adding host {name}", False, fmt, show=lambda: _show_host(api.get(f"/hosts/{name}"), fmt))


@host_app.command("update")
def update_host(
    name: str,
    cpu_ratio: float | None = CpuRatio,
    ram_ratio: float | None = RamRatio,
    disk_ratio: float | None = DiskRatio,
    fault_domain: str | None = FaultDomain,
    cpus: int | None = Cpus,
    memory: str | None = Memory,
    reserved_memory: str | None = Reserved,
    network: str | None = Network,
    bridge: str | None = Bridge,
    fence_agent: str | None = Agent,
    fence_option: list[str] | None = AgentOptions,
    fmt: output.Format = OutputOpt,
) -> None:
    """Change a host's ratios, fault domain, advertised capacity or fence agent."""
    body = _settings(
        cpu_ratio, ram_ratio, disk_ratio, fault_domain, cpus, memory, reserved_memory, network, bridge,
        fence_agent, fence_option,
    )  # fmt: skip
    _show_host(client().request("PATCH", f"/hosts/{name}", json=body), fmt)


@host_app.command("remove")
def remove_host(name: str) -> None:
    """Remove a host from the pool (refused while it holds VMs)."""
    client().delete(f"/hosts/{name}")
    output.console.print(f"removed host {name}")


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
            ("server", (op.get("owner") or "")[:8] or None),
            ("cancel asked", "yes" if op.get("cancel_requested") else None),
            ("result", {k: v for k, v in (op["result"] or {}).items() if k != "resumed"} or None),
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
                ("SERVER", lambda s: (s.get("server") or "")[:8]),
                ("TRIES", lambda s: s.get("attempts", 1)),
                ("DETAIL", lambda s: s["detail"]),
            ],
        )
    for resume in op["result"].get("resumed", []) if op["result"] else []:
        output.console.print(
            f"resumed by server {resume['server'][:8]} at step {resume['step']} ({resume['at'][11:23]})",
            highlight=False,
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


@operation_app.command("cancel")
def cancel_operation(
    operation_id: str,
    no_wait: bool = typer.Option(False, "--no-wait", help="return once the cancel is asked for"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Stop a move, drain, rebalance, scale-set change or maintenance run at its next step; what it did is undone."""
    api = client()
    full = _resolve(api, operation_id)
    asked = api.post(f"/operations/{full}/cancel")
    if no_wait:
        _show_operation(asked, fmt)
        return
    done = api.wait(full)
    if done["status"] != "canceled":
        raise FlexvmError(
            f"operation {full[:8]} ended {done['status']} before the cancel took effect",
            details={"operation_id": full, "status": done["status"]},
        )
    if fmt is output.Format.json:
        output.emit_json(done)
    else:
        undone = [s["name"] for s in done["steps"] if s["status"] == "undone"]
        output.console.print(
            f"operation {full[:8]} ({done['kind']} of {done['target_name']}) canceled"
            + (f"; undone: {', '.join(undone)}" if undone else ""),
            highlight=False,
        )


server_app = typer.Typer(help="The flexvm servers sharing one database.", no_args_is_help=True)


@server_app.command("list")
def list_servers(fmt: output.Format = OutputOpt) -> None:
    """Every server seen lately: whether it lives, which one leads, what each runs."""
    servers = client().get("/servers")
    if fmt is output.Format.json:
        output.emit_json(servers)
        return
    now = time.time()
    output.table(
        servers,
        [
            ("ID", lambda s: s["id"][:8]),
            ("STATE", lambda s: s["state"]),
            ("LEADER", lambda s: "yes" if s["leader"] else ""),
            ("HOST", lambda s: f"{s['hostname']}:{s['pid']}"),
            ("URL", lambda s: s["url"]),
            ("HEARD", lambda s: f"{max(0.0, now - s['heartbeat']):.0f} s ago"),
            ("RUNNING", lambda s: ", ".join(op[:8] for op in s["operations"]) or "-"),
        ],
    )


def _show_moves(plan: dict[str, Any], title: str) -> None:
    output.console.print(
        f"{title}: {len(plan['moves'])} move(s), about {plan['estimate_seconds']:.0f} s "
        f"with {plan['parallel']} at a time"
    )
    for number, move in enumerate(plan["moves"], 1):
        output.console.print(
            f"  {number}. {move['vm']}: {move['source']} -> {move['destination']} ({move['mode']}, "
            f"~{move['estimate_seconds']:.0f} s)"
        )
    for vm, why in sorted(plan["stays"].items()):
        output.console.print(f"  [yellow]stays[/] {vm}: {why}")
    if plan.get("spread_before") is not None:
        output.console.print(
            f"  memory-use gap between hosts: {plan['spread_before']:.0%} -> {plan['spread_after']:.0%}"
        )


@host_app.command("drain")
def drain_host(
    name: str,
    parallel: int = typer.Option(1, "--parallel", help="moves at a time"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, change nothing"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Maintenance: no new VMs here, and every VM that can moves away (live if it runs)."""
    api = client()
    if dry_run:
        plan = api.post(f"/hosts/{name}/drain", {"parallel": parallel, "dry_run": True})
        output.emit_json(plan) if fmt is output.Format.json else _show_moves(plan, f"drain {name}")
        return
    operation = api.post(f"/hosts/{name}/drain", {"parallel": parallel})
    finish(api, operation, f"draining {name}", False, fmt, show=lambda: _show_host(api.get(f"/hosts/{name}"), fmt))


@host_app.command("fence")
def fence_host(name: str, fmt: output.Format = OutputOpt) -> None:
    """Fence a failed host by its agent now (one held because several failed at once, or whose
    fence failed): it is powered off, and its HA VMs start elsewhere."""
    api = client()
    operation = api.post(f"/hosts/{name}/fence")
    finish(api, operation, f"fencing {name}", False, fmt, show=lambda: _show_host(api.get(f"/hosts/{name}"), fmt))


@host_app.command("fence-confirm")
def confirm_fence(name: str, fmt: output.Format = OutputOpt) -> None:
    """Say that you have checked the machine is off: it is fenced, and its HA VMs start elsewhere.
    Confirm only what you have seen: a VM on a host that still runs would run twice."""
    api = client()
    operation = api.post(f"/hosts/{name}/fence-confirm")
    finish(api, operation, f"fencing {name}", False, fmt, show=lambda: _show_host(api.get(f"/hosts/{name}"), fmt))


@host_app.command("undrain")
def undrain_host(name: str, fmt: output.Format = OutputOpt) -> None:
    """End maintenance: the host takes new VMs again."""
    _show_host(client().post(f"/hosts/{name}/undrain"), fmt)


@host_app.command("rebalance")
def rebalance(
    threshold: float = typer.Option(0.25, "--threshold", help="largest allowed gap in memory use (0-1)"),
    max_moves: int = typer.Option(5, "--max-moves"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, change nothing"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Move VMs so no host is fuller than another by more than the threshold."""
    api = client()
    body = {"threshold": threshold, "max_moves": max_moves, "dry_run": dry_run}
    if dry_run:
        plan = api.post("/pool/rebalance", body)
        output.emit_json(plan) if fmt is output.Format.json else _show_moves(plan, "rebalance")
        return
    operation = api.post("/pool/rebalance", body)
    finish(api, operation, "rebalancing", False, fmt)
