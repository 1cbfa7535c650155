"""`flexvm top`, `flexvm vm metrics` and `flexvm advisor`."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flexvm.cli import output
from flexvm.cli.common import OutputOpt, client
from flexvm.errors import InvalidInput

SORTS = {"c": "cpu", "m": "memory", "n": "name", "d": "disk", "x": "net"}
BARS = "▁▂▃▄▅▆▇█"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if value >= size:
            return f"{value / size:.1f}{unit}/s"
    return f"{value:.0f}B/s"


def _sort_key(sort: str) -> Any:
    def key(item: dict[str, Any]) -> Any:
        values = item["values"]
        if sort == "name":
            return (0, item["subject"])
        if sort == "memory":
            return (-(values.get("memory_used_mib") or 0), item["subject"])
        if sort == "disk":
            return (
                -((values.get("disk_read_bytes_per_s") or 0) + (values.get("disk_write_bytes_per_s") or 0)),
                item["subject"],
            )
        if sort == "net":
            return (
                -((values.get("net_rx_bytes_per_s") or 0) + (values.get("net_tx_bytes_per_s") or 0)),
                item["subject"],
            )
        return (-(values.get("cpu_percent") or 0), item["subject"])

    return key


def render(latest: list[dict[str, Any]], sort: str) -> Table:
    """The fleet as one table: each host, then its VMs, sorted."""
    hosts = sorted((i for i in latest if i["kind"] == "host"), key=lambda i: i["subject"])
    vms = sorted((i for i in latest if i["kind"] == "vm"), key=_sort_key(sort))
    grid = Table(
        box=None,
        header_style="bold reverse",
        pad_edge=False,
        expand=False,
        caption=f"sorted by {sort} — keys: c cpu, m memory, n name, d disk, x net, q quit — "
        f"{time.strftime('%H:%M:%S')}",
    )
    # Names are never cut: on a narrow terminal the figures give way first.
    longest = max([len(f"host {h['subject']}") for h in hosts] + [len(v["subject"]) + 2 for v in vms] + [4])
    grid.add_column("NAME", no_wrap=True, min_width=longest)
    grid.add_column("SIZE", no_wrap=True)
    for heading in ("CPU%", "MEM USED", "MEM%", "DISK R", "DISK W", "NET RX", "NET TX"):
        grid.add_column(heading, justify="right")
    for host in hosts:
        v = host["values"]
        grid.add_row(
            Text(f"host {host['subject']}", style="bold cyan"),
            f"{v.get('vm_count', 0):.0f} VMs, {v.get('vcpus_allocated', 0):.0f} vCPU",
            _pct(v.get("cpu_percent")),
            output.mib(int(v.get("memory_used_mib") or 0)),
            _pct(v.get("memory_used_percent")),
            "",
            "",
            "",
            "",
        )
        for vm in (item for item in vms if item["labels"].get("host") == host["subject"]):
            w = vm["values"]
            grid.add_row(
                f"  {vm['subject']}",
                vm["labels"].get("size", ""),
                _pct(w.get("cpu_percent")),
                output.mib(int(w["memory_used_mib"])) if "memory_used_mib" in w else "-",
                _pct(w.get("memory_used_percent")),
                _rate(w.get("disk_read_bytes_per_s")),
                _rate(w.get("disk_write_bytes_per_s")),
                _rate(w.get("net_rx_bytes_per_s")),
                _rate(w.get("net_tx_bytes_per_s")),
            )
    if not hosts:
        grid.add_row("(no measurements yet: the collector reads hosts every few seconds)", *[""] * 8)
    return grid


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:5.1f}"


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """Single key presses from a terminal (nothing when stdin is not one)."""
    if not sys.stdin.isatty():

        def wait(timeout: float) -> str | None:
            time.sleep(timeout)
            return None

        yield wait
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="ignore") if ready else None

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def top(
    interval: float = typer.Option(2.0, "--interval", help="seconds between refreshes"),
    sort: str = typer.Option("cpu", "--sort", help="cpu, memory, name, disk or net"),
    once: bool = typer.Option(False, "--once", help="print one screen and exit"),
    iterations: int = typer.Option(0, "--iterations", help="stop after N refreshes (0: until q)"),
    fmt: output.Format = OutputOpt,
) -> None:
    """A live view of hosts and their VMs, like htop for the fleet."""
    if sort not in SORTS.values():
        raise InvalidInput("sort", f"'{sort}' is not one of {', '.join(SORTS.values())}")
    if interval < 0.5:
        raise InvalidInput("interval", "must be at least 0.5 s")
    api = client()
    if once or fmt is output.Format.json:
        latest = api.get("/metrics/latest")
        output.emit_json(latest) if fmt is output.Format.json else output.console.print(render(latest, sort))
        return
    shown = 0
    with (
        _keys() as read_key,
        Live(
            render(api.get("/metrics/latest"), sort), console=output.console, auto_refresh=False, screen=False
        ) as live,
    ):
        while iterations == 0 or shown < iterations:
            key = read_key(interval)
            if key == "q":
                break
            if key in SORTS:
                sort = SORTS[key]
            live.update(render(api.get("/metrics/latest"), sort), refresh=True)
            shown += 1


def sparkline(values: list[float], top_value: float | None = None) -> str:
    if not values:
        return ""
    high = top_value if top_value is not None else max(values)
    high = high or 1.0
    return "".join(BARS[min(len(BARS) - 1, int(v / high * (len(BARS) - 1) + 0.5))] for v in values)


def vm_metrics(
    name: str,
    metric: str = typer.Option("cpu_percent", "--metric"),
    window: str = typer.Option("1h", "--window", help="e.g. 15m, 1h, 7d"),
    statistic: str = typer.Option("avg", "--statistic", help="avg, min or max"),
    grain: str | None = typer.Option(None, "--grain", help="bucket size, e.g. 1m"),
    fmt: output.Format = OutputOpt,
) -> None:
    """A VM's measurements over a window, as a compact chart."""
    series = client().get(f"/vms/{name}/metrics", metric=metric, window=window, statistic=statistic, grain=grain)
    if fmt is output.Format.json:
        output.emit_json(series)
        return
    values = [v for _, v in series["points"]]
    if not values:
        output.console.print(f"no {metric} measurements of {name} in the last {window}")
        return
    percent = metric.endswith("_percent")
    output.console.print(
        f"{name} {metric} ({statistic} per {series['grain_seconds']:.0f} s, last {window}, "
        f"{len(values)} points, from {series['source']} samples)"
    )
    output.console.print(sparkline(values, 100.0 if percent else None))
    output.console.print(
        f"min {min(values):.1f}  avg {sum(values) / len(values):.1f}  max {max(values):.1f}"
        + ("  (percent)" if percent else "")
    )


def proposal_command(advice: dict[str, Any]) -> str | None:
    """What to type about a piece of advice: the resize it proposes, or how to ease a host."""
    resize, host = advice.get("resize"), advice.get("host_change")
    if resize:
        return f"flexvm vm resize {resize['vm']} --size {resize['proposed_size']}"
    if host:
        return (
            "flexvm host rebalance --dry-run   "
            f"# or: flexvm host update {host['host']} --cpu-ratio <below {host['cpu_ratio']:g}>"
        )
    return None


def advisor(
    window: str = typer.Option("1h", "--window", help="how far back to look"), fmt: output.Format = OutputOpt
) -> None:
    """VMs too big or too small for what they do, hosts that make guests wait — with the evidence."""
    report = client().get("/advisor", window=window)
    if fmt is output.Format.json:
        output.emit_json(report)
        return
    if not report["advice"]:
        output.console.print(f"nothing to advise over the last {window}")
    for item in report["advice"]:
        colour = {"oversized": "yellow", "starved": "red", "contention": "magenta"}.get(item["kind"], "white")
        output.console.print(f"[{colour}]{item['kind']}[/] {item['message']}")
        evidence = ", ".join(f"{k} {v:g}" for k, v in item["evidence"].items())
        output.console.print(f"    evidence: {evidence}")
        command = proposal_command(item)
        if command:
            output.console.print(f"    run: {escape(command)}", highlight=False)
    if report["not_enough_data"]:
        output.console.print(f"not enough measurements yet for: {', '.join(report['not_enough_data'])}")
