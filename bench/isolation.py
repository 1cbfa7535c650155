"""What projects' network isolation costs, on a 1-host lab, against the bare libvirt call, same run.

A tiny VM in a project is created through flexvm (its NIC carries the project's nwfilter), then
stopped. Its domain is started and destroyed again with libvirt's bare ``virDomainCreate``: as
flexvm defined it (libvirtd applies the filter to the new tap) and as the same XML without the
filter reference, alternately. Then the project's filter is redefined with the guest running:
unchanged (what flexvm does before every define) and changed (a project taking a new block, which
makes libvirtd re-apply every guest NIC's rules on the host).

    .venv/bin/python bench/isolation.py [--runs 5]
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import FlexvmServer  # noqa: E402

from flexvm.drivers.libvirt.nwfilter_xml import project_filter_xml  # noqa: E402
from flexvm.lab import Lab  # noqa: E402
from flexvm.model.network import Isolation  # noqa: E402


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def starts(conn: libvirt.virConnect, name: str, runs: int) -> dict[str, list[float]]:
    dom = conn.lookupByName(name)
    filtered = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    bare = re.sub(r"<filterref.*?</filterref>", "", filtered, flags=re.S)
    results: dict[str, list[float]] = {"with the project's filter": [], "without a filter (bare libvirt)": []}
    try:
        for _ in range(runs):
            for label, xml in zip(results, (filtered, bare), strict=True):
                dom = conn.defineXML(xml)
                results[label].append(timed(dom.create))
                dom.destroy()
    finally:
        conn.defineXML(filtered)
    return results


def redefinitions(conn: libvirt.virConnect, filter_name: str, runs: int) -> dict[str, list[float]]:
    """Define the filter alternately with one block and with two: each change is timed, and the
    same definition given again right after it (unchanged)."""
    original = conn.nwfilterLookupByName(filter_name)
    uuid, saved = original.UUIDString(), original.XMLDesc(0)
    _, network, project = filter_name.split(".")
    space = ("10.213.0.32/27", "10.213.0.64/26", "10.213.0.128/26", "10.213.0.192/27", "10.213.0.224/28")
    shapes = [
        Isolation(network, project, ("10.213.0.32/28",), space),
        Isolation(network, project, ("10.213.0.32/28", "10.213.0.224/28"), space),
    ]
    results: dict[str, list[float]] = {"unchanged": [], "changed (a new block)": []}
    try:
        for run in range(runs):
            define = functools.partial(conn.nwfilterDefineXML, project_filter_xml(shapes[run % 2], uuid))
            results["changed (a new block)"].append(timed(define))
            results["unchanged"].append(timed(define))
    finally:
        conn.nwfilterDefineXML(saved)
    return results


def report(title: str, results: dict[str, list[float]], baseline: str | None = None) -> None:
    print(f"\n{title}")
    medians = {label: statistics.median(values) for label, values in results.items()}
    for label, median in medians.items():
        ratio = f"  ({median / medians[baseline]:.1f}x)" if baseline and label != baseline else ""
        print(f"  {label:36s} median {median * 1000:8.1f} ms{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-isolation-") as tmp:
        server = FlexvmServer(Path(tmp) / "home", {"FLEXVM_LIBVIRT_URI": "", "FLEXVM_READY_TIMEOUT": "120"})
        server.start()
        try:
            server.ok("lab", "up", "--hosts", "1", "--host-cpus", "2", "--host-memory", "2G")
            server.ok("image", "build", "tiny")
            server.ok("project", "create", "bench")
            started = time.perf_counter()
            server.ok("vm", "create", "v1", "--project", "bench", "--size", "Standard_B1ls", "--image", "tiny")
            print(f"flexvm vm create (isolated NIC) until ready: {time.perf_counter() - started:.2f} s")
            server.ok("vm", "stop", "v1", "--project", "bench", "--force")
            uri = str(server.ok("host", "show", "lab1", "-o", "json").json()["uri"])
            conn = libvirt.open(uri)
            try:
                report(
                    f"Starting the guest's domain, median of {runs}",
                    starts(conn, "bench.v1", runs),
                    "without a filter (bare libvirt)",
                )
                running = conn.lookupByName("bench.v1")  # the guest whose NIC the filter's change reaches
                if not running.isActive():
                    running.create()
                report(
                    f"Redefining the project's filter with its guest running, median of {runs}",
                    redefinitions(conn, "flexvm.lab.bench", runs),
                    "unchanged",
                )
            finally:
                conn.close()
            server.ok("vm", "delete", "v1", "--project", "bench")
        finally:
            server.cli("lab", "down", "--force")
            Lab(server.home / "lab").down()
            server.stop()


if __name__ == "__main__":
    main()
