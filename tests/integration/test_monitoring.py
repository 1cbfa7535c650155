"""Watching a real guest: its CPU % rises to about one vCPU while it burns and falls back after,
the history and Prometheus say the same, and `flexvm top` runs in a real terminal (tmux)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flexvm.lab import Lab
from tests.helpers import FLEXVM, FlexvmServer, unique, wait_for


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FlexvmServer, str, str]]:
    """A server measuring every second, one lab host, one running tiny guest: (server, VM, its address)."""
    server = FlexvmServer(
        tmp_path_factory.mktemp("watch"),
        {"FLEXVM_LIBVIRT_URI": "", "FLEXVM_METRICS_INTERVAL": "1", "FLEXVM_READY_TIMEOUT": "90"},
    )
    server.start()
    try:
        server.ok("lab", "up", "--hosts", "1", "--host-cpus", "2", "--host-memory", "3G")
        server.ok("image", "build", "tiny")
        name = unique("watch")
        server.ok("vm", "create", name, "--size", "Standard_B1s", "--image", "tiny")
        yield server, name, server.ok("vm", "show", name, "-o", "json").json()["nics"][0]["ip"]
    finally:
        server.cli("lab", "down", "--force")
        Lab(server.home / "lab").down()
        server.stop()


def cpu_now(server: FlexvmServer, name: str) -> float | None:
    for item in server.ok("top", "-o", "json").json():
        if item["kind"] == "vm" and item["subject"] == name:
            return item["values"].get("cpu_percent")
    return None


def test_cpu_percent_follows_a_burning_guest(watched: tuple[FlexvmServer, str, str]) -> None:
    server, name, ip = watched
    wait_for(lambda: (c := cpu_now(server, name)) is not None and c < 30, 60, "a quiet guest's CPU % to settle low")
    burner = threading.Thread(
        target=lambda: httpx.Client(trust_env=False, timeout=60).get(f"http://{ip}/burn?seconds=12")
    )
    burner.start()
    try:
        busy = wait_for(
            lambda: (c := cpu_now(server, name)) is not None and c > 80 and c, 20, "CPU % to rise while the guest burns"
        )
        assert busy <= 100.0
    finally:
        burner.join(timeout=60)
    wait_for(lambda: (c := cpu_now(server, name)) is not None and c < 30, 30, "CPU % to fall after the burn")

    def history_rose_then_fell() -> bool:
        series = server.ok(
            "vm", "metrics", name, "--window", "2m", "--grain", "1s", "--statistic", "max", "-o", "json"
        ).json()
        values = [v for _, v in series["points"]]
        peaks = [i for i, v in enumerate(values) if v > 80]
        return bool(peaks) and any(v < 30 for v in values[peaks[-1] :])

    # Polled, not read once: `top` shows a round a moment before it is stored, and a bucket
    # can straddle the fall.
    wait_for(history_rose_then_fell, 10, "the stored history to show the rise and then the fall")
    shown = server.ok("vm", "metrics", name, "--window", "2m").stdout
    assert "cpu_percent" in shown and any(bar in shown for bar in "▁▂▃▄▅▆▇█")

    scrape = httpx.get(f"{server.url}/metrics", timeout=10, verify=server.verify())
    assert scrape.status_code == 401, "it names every project's VMs: no scrape without a token"
    text = httpx.get(
        f"{server.url}/metrics", timeout=10, verify=server.verify(), headers={"Authorization": f"Bearer {server.token}"}
    ).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    labels = [s.labels for s in families["flexvm_vm_cpu_percent"].samples]
    assert {"vm": name, "host": "lab1", "size": "Standard_B1s", "scale_set": ""} in labels
    assert any(s.labels["host"] == "lab1" for s in families["flexvm_host_cpu_percent"].samples)

    report = server.ok("advisor", "--window", "2m", "-o", "json").json()
    assert report["window"] == "2m" and name not in report["not_enough_data"]
    bad = server.cli("vm", "metrics", name, "--metric", "cpu")
    assert bad.returncode == 1 and "cpu_percent" in bad.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup.sh installs it)")
def test_top_in_a_terminal(watched: tuple[FlexvmServer, str, str]) -> None:
    server, name, _ = watched
    session = f"flexvm-top-{uuid.uuid4().hex[:6]}"
    env = " ".join(f"{k}={v}" for k, v in server.env.items() if k.startswith("FLEXVM_"))
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40", f"env {env} {FLEXVM} top --interval 1"],
        check=True,
    )

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    try:
        try:
            wait_for(lambda: "host lab1" in screen() and name in screen(), 30, "top to show the host and its VM")
        except AssertionError as err:
            raise AssertionError(f"{err}; the screen:\n{screen()}") from None
        assert "sorted by cpu" in screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "n"], check=True)
        wait_for(lambda: "sorted by name" in screen(), 10, "top to sort by name after 'n'")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_for(
            lambda: subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0,
            10,
            "top to quit on 'q'",
        )
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
