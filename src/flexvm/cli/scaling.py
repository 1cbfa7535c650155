"""`flexvm scaleset …` and `flexvm autoscale …`"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from flexvm.cli import output
from flexvm.cli.client import ApiClient
from flexvm.cli.common import OutputOpt, client, finish, read_user_data
from flexvm.errors import InvalidInput

scaleset_app = typer.Typer(
    help="Scale sets: identical VMs from one model, behind one load balancer.", no_args_is_help=True
)
autoscale_app = typer.Typer(help="Autoscale: a scale set's range and the rules that move it.", no_args_is_help=True)
rule_app = typer.Typer(help="Autoscale rules: when to add or remove instances.", no_args_is_help=True)
autoscale_app.add_typer(rule_app, name="rule")

NoWait = typer.Option(False, "--no-wait", help="Return at once with the operation instead of waiting.")


class Synthetic(StrEnum):
    day = "day"


# --- scale sets ------------------------------------------------------------------------------


def _counts(item: dict[str, Any]) -> str:
    states = item["instances"]
    parts = ", ".join(f"{count} {state}" for state, count in states.items())
    return f"{item['capacity']} wanted" + (f" ({parts})" if parts else " (none yet)")


def _balancer(lb: dict[str, Any] | None) -> str:
    if lb is None:
        return "none"
    return f"{lb['bind_address']}:{lb['port']} -> instances:{lb['backend_port']} (probe GET {lb['probe_path']})"


def _autoscale(profile: dict[str, Any] | None) -> str:
    if profile is None:
        return "off"
    return f"{profile['min']}-{profile['max']} instances, default {profile['default']}"


def show_set(item: dict[str, Any], fmt: output.Format) -> None:
    if fmt is output.Format.json:
        output.emit_json(item)
        return
    output.details(
        [
            ("name", item["name"]),
            ("size", item["size"]),
            ("image", item["image"]),
            ("instances", _counts(item)),
            ("fault domains", item["fault_domains"]),
            ("scale-in policy", item["scale_in_policy"]),
            ("load balancer", _balancer(item["load_balancer"])),
            ("network", item["network"]),
            ("model version", item["model_version"]),
            ("max unavailable", item["max_unavailable"]),
            ("autoscale", _autoscale(item["autoscale"])),
            ("rules", "\n".join(f"{r['id']}: {r['description']}" for r in item["rules"]) or None),
            ("replaced", item["replaced"] or None),
            ("operation", item["active_operation_id"]),
            ("error", item["error"]),
            ("created", item["created_at"]),
        ]
    )


def _after(api: ApiClient, name: str, operation: dict[str, Any], label: str, no_wait: bool, fmt: output.Format) -> None:
    finish(api, operation, label, no_wait, fmt, show=lambda: show_set(api.get(f"/scalesets/{name}"), fmt))


@scaleset_app.command("create")
def create(
    name: str,
    size: str = typer.Option(..., "--size", "-s", help="each instance's size; see `flexvm size list`"),
    image: str = typer.Option(..., "--image", "-i", help="see `flexvm image list`"),
    instances: int = typer.Option(..., "--instances", "-n", help="how many to start with"),
    lb_port: str | None = typer.Option(
        None, "--lb-port", help="load balance FRONT:BACK, e.g. 8080:80 (instances need a host network)"
    ),
    lb_bind: str | None = typer.Option(None, "--lb-bind", help="address the frontend listens on"),
    probe_path: str = typer.Option("/", "--probe-path", help="instances serve once GET of this answers 200"),
    fault_domains: int | None = typer.Option(None, "--fault-domains", help="spread over this many (default 2)"),
    user_data: Path | None = typer.Option(None, "--user-data", help="cloud-init user data file (cloud images)"),
    scale_in_policy: str = typer.Option(
        "default", "--scale-in-policy", help="who goes first when shrinking: default, newest or oldest"
    ),
    max_unavailable: int = typer.Option(1, "--max-unavailable", help="instances an update may take down at once"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Create a scale set and wait until its instances serve."""
    body: dict[str, Any] = {
        "name": name,
        "size": size,
        "image": image,
        "instances": instances,
        "lb_port": lb_port,
        "lb_bind": lb_bind,
        "probe_path": probe_path,
        "fault_domains": fault_domains,
        "scale_in_policy": scale_in_policy,
        "max_unavailable": max_unavailable,
    }
    if user_data is not None:
        body["user_data"] = read_user_data(user_data)
    api = client()
    _after(api, name, api.post("/scalesets", body), f"creating scale set {name}", no_wait, fmt)


@scaleset_app.command("list")
def list_sets(fmt: output.Format = OutputOpt) -> None:
    """List scale sets."""
    sets = client().get("/scalesets")
    if fmt is output.Format.json:
        output.emit_json(sets)
        return
    output.table(
        sets,
        [
            ("NAME", lambda s: s["name"]),
            ("SIZE", lambda s: s["size"]),
            ("IMAGE", lambda s: s["image"]),
            ("CAPACITY", lambda s: s["capacity"]),
            ("SERVING", lambda s: s["instances"].get("serving", 0)),
            ("LOAD BALANCER", lambda s: _balancer(s["load_balancer"]).split(" (")[0]),
            ("AUTOSCALE", lambda s: _autoscale(s["autoscale"]).split(",")[0]),
            ("MODEL", lambda s: f"v{s['model_version']}"),
        ],
    )


@scaleset_app.command("show")
def show(name: str, fmt: output.Format = OutputOpt) -> None:
    """Show one scale set: its model, load balancer, instances and autoscale."""
    show_set(client().get(f"/scalesets/{name}"), fmt)


@scaleset_app.command("delete")
def delete(name: str, no_wait: bool = NoWait, fmt: output.Format = OutputOpt) -> None:
    """Delete a scale set with all its instances."""
    api = client()
    operation = api.delete(f"/scalesets/{name}")
    finish(
        api,
        operation,
        f"deleting scale set {name}",
        no_wait,
        fmt,
        show=lambda: output.console.print(f"deleted scale set {name}") if fmt is output.Format.table else None,
    )


@scaleset_app.command("scale")
def scale(
    name: str,
    instances: int = typer.Option(..., "--instances", "-n", help="the new instance count"),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Grow or shrink a scale set to a number of instances."""
    api = client()
    operation = api.post(f"/scalesets/{name}/scale", {"instances": instances})
    _after(api, name, operation, f"scaling {name} to {instances}", no_wait, fmt)


@scaleset_app.command("update")
def update(
    name: str,
    size: str | None = typer.Option(None, "--size", "-s", help="new size for every instance"),
    image: str | None = typer.Option(None, "--image", "-i", help="new image for every instance"),
    max_unavailable: int | None = typer.Option(
        None, "--max-unavailable", help="instances the rolling update may take down at once"
    ),
    no_wait: bool = NoWait,
    fmt: output.Format = OutputOpt,
) -> None:
    """Change the model and roll the instances onto it, a few at a time."""
    api = client()
    body = {"size": size, "image": image, "max_unavailable": max_unavailable}
    operation = api.post(f"/scalesets/{name}/update", body)
    _after(api, name, operation, f"updating {name}", no_wait, fmt)


@scaleset_app.command("instances")
def list_instances(name: str, fmt: output.Format = OutputOpt) -> None:
    """List a scale set's instances: where they run and where they stand with the load balancer."""
    instances = client().get(f"/scalesets/{name}/instances")
    if fmt is output.Format.json:
        output.emit_json(instances)
        return
    output.table(
        instances,
        [
            ("NAME", lambda i: i["name"]),
            ("STATE", lambda i: i["state"]),
            ("HOST", lambda i: i["host"]),
            ("IP", lambda i: i["ip"]),
            ("POWER", lambda i: i["power_state"]),
            ("LB", lambda i: i["lb_status"]),
            ("CURRENT MODEL", lambda i: "yes" if i["current_model"] else f"no (v{i['model_version']})"),
        ],
    )


# --- autoscale -------------------------------------------------------------------------------


@autoscale_app.command("set")
def set_profile(
    scaleset: str,
    min_count: int = typer.Option(..., "--min", help="never fewer instances than this"),
    max_count: int = typer.Option(..., "--max", help="never more instances than this"),
    default_count: int = typer.Option(..., "--default", help="kept at least while no metrics arrive"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Turn autoscale on for a scale set with a range of instances."""
    body = {"min": min_count, "max": max_count, "default": default_count}
    profile = client().request("PUT", f"/scalesets/{scaleset}/autoscale", json=body)
    if fmt is output.Format.json:
        output.emit_json(profile)
    else:
        output.console.print(f"autoscale on for {scaleset}: {_autoscale(profile)}")


@autoscale_app.command("off")
def off(scaleset: str) -> None:
    """Turn autoscale off for a scale set (its rules are kept)."""
    client().delete(f"/scalesets/{scaleset}/autoscale")
    output.console.print(f"autoscale off for {scaleset}; its rules are kept")


@rule_app.command("add")
def add_rule(
    scaleset: str,
    metric: str = typer.Option(..., "--metric", help="e.g. cpu_percent, requests_per_instance_per_s"),
    statistic: str = typer.Option("avg", "--statistic", help="avg, min or max"),
    grain: str = typer.Option("1m", "--grain", help="bucket length, e.g. 1m"),
    window: str = typer.Option("5m", "--window", help="how far back the statistic looks, e.g. 5m"),
    operator: str = typer.Option(..., "--operator", help="gt, ge, lt, le, eq or ne"),
    threshold: float = typer.Option(..., "--threshold"),
    action: str = typer.Option(..., "--action", help="increase (scale out) or decrease (scale in)"),
    count: int = typer.Option(1, "--count", help="instances to add or remove"),
    cooldown: str = typer.Option("5m", "--cooldown", help="wait after a scale action before acting again"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Add a rule: when a metric crosses a threshold, add or remove instances."""
    body = {
        "metric": metric,
        "statistic": statistic,
        "grain": grain,
        "window": window,
        "operator": operator,
        "threshold": threshold,
        "action": action,
        "count": count,
        "cooldown": cooldown,
    }
    added = client().post(f"/scalesets/{scaleset}/autoscale/rules", body)
    if fmt is output.Format.json:
        output.emit_json(added)
        return
    rule = added["rule"]
    output.console.print(f"rule {rule['id']}: {escape(rule['description'])}")
    for warning in added["warnings"]:
        output.console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


@rule_app.command("list")
def list_rules(scaleset: str, fmt: output.Format = OutputOpt) -> None:
    """List a scale set's autoscale rules."""
    rules = client().get(f"/scalesets/{scaleset}/autoscale/rules")
    if fmt is output.Format.json:
        output.emit_json(rules)
        return
    output.table(rules, [("ID", lambda r: r["id"]), ("RULE", lambda r: escape(r["description"]))])


@rule_app.command("remove")
def remove_rule(scaleset: str, rule_id: str) -> None:
    """Remove an autoscale rule by its id."""
    client().delete(f"/scalesets/{scaleset}/autoscale/rules/{rule_id}")
    output.console.print(f"removed rule {rule_id} from {scaleset}")


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


@autoscale_app.command("history")
def history(
    scaleset: str,
    limit: int = typer.Option(50, "--limit", help="at most this many events, newest first"),
    fmt: output.Format = OutputOpt,
) -> None:
    """What autoscale did to a scale set, and what it wanted to do but held back, with reasons."""
    events = client().get(f"/scalesets/{scaleset}/autoscale/history", limit=limit)
    if fmt is output.Format.json:
        output.emit_json(events)
        return
    if not events:
        output.console.print(f"no autoscale events for {scaleset} yet")
        return
    output.table(
        events,
        [
            ("TIME (UTC)", lambda e: _clock(e["at"])),
            ("ACTION", lambda e: e["action"]),
            ("COUNT", lambda e: f"{e['current']} -> {e['target']}"),
            ("RULE", lambda e: e["rule_id"]),
            ("REASON", lambda e: escape(e["reason"])),
        ],
    )


def _read_rules(path: Path) -> dict[str, Any]:
    """A rules file: a list of rules as the API takes them, or {"profile": {...}, "rules": [...]}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InvalidInput("rules", f"cannot read {path} as JSON: {err}") from err
    if isinstance(data, list):
        return {"rules": data}
    if isinstance(data, dict) and data and set(data) <= {"profile", "rules"}:
        return data
    raise InvalidInput("rules", f'{path} must hold a list of rules or {{"profile": {{...}}, "rules": [...]}}')


@autoscale_app.command("simulate")
def simulate(
    scaleset: str,
    start: str | None = typer.Option(
        None, "--from", help="ISO 8601 time, unix seconds or relative like -1h (default: an hour ago)"
    ),
    end: str | None = typer.Option(None, "--to", help="like --from (default: now)"),
    step: str = typer.Option("15s", "--step", help="how often the rules are evaluated"),
    synthetic: Synthetic | None = typer.Option(
        None, "--synthetic", help="replay a generated day of load instead of the recording"
    ),
    rules: Path | None = typer.Option(
        None, "--rules", help='JSON: a list of rules, or {"profile": {...}, "rules": [...]} (default: the set\'s own)'
    ),
    no_flap_guard: bool = typer.Option(False, "--no-flap-guard", help="see what the rules do without the guard"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Replay recorded (or synthetic) load against the autoscale rules, changing nothing."""
    body: dict[str, Any] = {
        "from": start,
        "to": end,
        "step": step,
        "synthetic": synthetic is not None,
        "flap_guard": not no_flap_guard,
    }
    if rules is not None:
        body.update(_read_rules(rules))
    result = client().post(f"/scalesets/{scaleset}/autoscale/simulate", body)
    if fmt is output.Format.json:
        output.emit_json(result)
    else:
        typer.echo(result["text"])
