"""`flexvm maintenance plan|run|status|pause|resume|cancel`: hosts updated one batch at a time."""

from __future__ import annotations

import time
from typing import Any

import typer

from flexvm.cli import output
from flexvm.cli.client import ApiClient
from flexvm.cli.common import OutputOpt, client
from flexvm.errors import FlexvmError, OperationFailed, ServerUnavailable

maintenance_app = typer.Typer(
    help="Rolling maintenance: drain a host live, run your update command, bring it and its VMs back; "
    "host by host, one fault domain of every set at a time.",
    no_args_is_help=True,
)

HostsOpt = typer.Option(None, "--hosts", help="the hosts, comma-separated (A,B)")
AllOpt = typer.Option(False, "--all", help="every host")
ParallelOpt = typer.Option(1, "--parallel", help="hosts at a time (never two fault domains of one set)")
ENDED = ("succeeded", "failed", "canceled")
SERVER_PATIENCE = 120.0  # seconds without an answer before `maintenance run` stops waiting


def _selection(hosts: str | None, every: bool, parallel: int) -> dict[str, Any]:
    names = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else None
    return {"hosts": names, "all_hosts": every, "parallel": parallel}


def _show_plan(plan: dict[str, Any]) -> None:
    hook = plan["hook_seconds"]
    output.console.print(
        f"{len(plan['hosts'])} host(s) in {len(plan['batches'])} batch(es), {plan['parallel']} at a time; "
        f"about {plan['estimate_seconds']:.0f} s"
        + (f" (the hook took {hook:.0f} s a batch last time)" if hook is not None else " plus the hook's own time"),
        highlight=False,
    )
    for batch in plan["batches"]:
        output.console.print(
            f"  batch {batch['number']}: {', '.join(batch['hosts'])} (~{batch['estimate_seconds']:.0f} s)",
            highlight=False,
        )
        for drain in batch["drains"]:
            for move in drain["moves"]:
                output.console.print(
                    f"    {move['vm']}: {move['source']} -> {move['destination']} ({move['mode']}), and back",
                    highlight=False,
                )
            for vm, why in sorted(drain["stays"].items()):
                output.console.print(f"    [yellow]stays[/] {vm} on {drain['host']}: {why}", highlight=False)
    for check in plan["sets"]:
        output.console.print(
            f"  scale set {check['name']}: {check['running']} running, at least {check['lowest']} throughout "
            f"(minimum {check['minimum']})",
            highlight=False,
        )
    if plan["fits"]:
        output.console.print("capacity: every batch's running VMs fit on the other hosts (N+1)", highlight=False)
    for blocker in plan["blockers"]:
        output.console.print(f"[red]cannot run:[/] {blocker}", highlight=False)


def _show_status(status: dict[str, Any]) -> None:
    operation = status["operation"]
    output.details(
        [
            ("run", operation["id"]),
            ("state", status["state"] + (f": {status['reason']}" if status["reason"] else "")),
            ("progress", f"{operation['progress']}% {operation['message']}"),
        ]
    )
    output.table(
        [{"host": h, "phase": p} for h, p in status["hosts"].items()],
        [("HOST", lambda r: r["host"]), ("PHASE", lambda r: r["phase"])],
    )
    if status["state"] == "paused":
        output.console.print("go on with `flexvm maintenance resume`, or stop with `flexvm maintenance cancel`")


@maintenance_app.command("plan")
def plan(
    hosts: str | None = HostsOpt, every: bool = AllOpt, parallel: int = ParallelOpt, fmt: output.Format = OutputOpt
) -> None:
    """The order, the capacity check (N+1), what cannot move live and why, and the time (changes nothing)."""
    result = client().post("/maintenance/plan", _selection(hosts, every, parallel))
    output.emit_json(result) if fmt is output.Format.json else _show_plan(result)


@maintenance_app.command("run")
def run(
    hook: str = typer.Option(..., "--hook", help="the command that updates one host ($FLEXVM_HOST, $FLEXVM_HOST_URI)"),
    hosts: str | None = HostsOpt,
    every: bool = AllOpt,
    parallel: int = ParallelOpt,
    hook_timeout: float = typer.Option(1800, "--hook-timeout", help="seconds a hook may run"),
    host_timeout: float = typer.Option(600, "--host-timeout", help="seconds for a host to be back after its hook"),
    no_wait: bool = typer.Option(False, "--no-wait", help="start it and return"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Drain, update, bring back, host by host; pauses itself on any regression."""
    api = client()
    body = {**_selection(hosts, every, parallel), "hook": hook, "hook_timeout": hook_timeout}
    operation = api.post("/maintenance/runs", {**body, "host_timeout": host_timeout})
    if no_wait:
        output.emit_json(operation) if fmt is output.Format.json else output.console.print(
            f"maintenance run {operation['id']} started; follow it with `flexvm maintenance status`"
        )
        return
    status = _wait(api, operation["id"])
    output.emit_json(status) if fmt is output.Format.json else _show_status(status)
    if status["state"] == "paused":
        raise FlexvmError(f"the maintenance run paused: {status['reason']}")
    if status["state"] != "succeeded":
        error = status["operation"].get("error") or {}
        raise OperationFailed(
            f"the maintenance run {status['state']}: {error.get('message', status['operation']['message'])}"
        )


def _wait(api: ApiClient, operation_id: str) -> dict[str, Any]:
    """Until the run ends or pauses (a paused run waits for an operator: so does this, no longer)."""
    unavailable_since: float | None = None
    with output.err_console.status("maintenance") as spinner:
        while True:
            try:
                status: dict[str, Any] = api.get("/maintenance")
            except ServerUnavailable:  # a server restarting: the run goes on without it, and so do we
                unavailable_since = unavailable_since or time.monotonic()
                if time.monotonic() - unavailable_since > SERVER_PATIENCE:
                    raise
                spinner.update("maintenance: waiting for the server to answer again")
                time.sleep(1.0)
                continue
            unavailable_since = None
            if status["operation"]["id"] != operation_id:
                raise FlexvmError(f"maintenance run {operation_id} is no longer the latest one")
            operation = status["operation"]
            spinner.update(f"maintenance: {operation['progress']}% {operation['message']}")
            if status["state"] in (*ENDED, "paused"):
                return status
            time.sleep(0.5)


@maintenance_app.command("status")
def status(fmt: output.Format = OutputOpt) -> None:
    """The run under way (or the last one): its state, and where each host stands."""
    result = client().get("/maintenance")
    output.emit_json(result) if fmt is output.Format.json else _show_status(result)


@maintenance_app.command("pause")
def pause(fmt: output.Format = OutputOpt) -> None:
    """Pause before the next batch: the hosts being updated now finish and come back first."""
    result = client().post("/maintenance/pause")
    output.emit_json(result) if fmt is output.Format.json else _show_status(result)


@maintenance_app.command("resume")
def resume(fmt: output.Format = OutputOpt) -> None:
    """Go on: what paused the run (a hook, a host not back, a regression) is tried again."""
    result = client().post("/maintenance/resume")
    output.emit_json(result) if fmt is output.Format.json else _show_status(result)


@maintenance_app.command("cancel")
def cancel(fmt: output.Format = OutputOpt) -> None:
    """Stop the run (a hook under way ends first): hosts whose update never began are up again."""
    result = client().post("/maintenance/cancel")
    output.emit_json(result) if fmt is output.Format.json else _show_status(result)
