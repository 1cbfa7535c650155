"""The README's first command, as a user runs it: set up, serve, build the tiny image, boot a first VM.

Runs `scripts/up.sh` (what `make up` runs) with its own home, port and VM name so it cannot touch
an installation on the same machine, four times: the second run must reuse everything and start
the VM stopped behind its back; the third must put back the `local` host, the tiny image and the
first VM, all removed; the fourth must start the server again after it was stopped. After the
first, the API answers as the README shows it: HTTPS, with curl trusting the CA the server made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import FlexvmServer, domains, free_port, unique, wait_for

ROOT = Path(__file__).resolve().parents[2]


def run_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "up.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def test_make_up_twice_leaves_a_running_first_vm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    vm = unique("e2e-first")
    env = dict(os.environ, FLEXVM_HOME=str(home), FLEXVM_PORT=str(port), FLEXVM_FIRST_VM=vm, COLUMNS="200")
    server = FlexvmServer(home, port=port)
    try:
        first = run_up(env)
        assert first.returncode == 0, first.stderr + first.stdout
        out = first.stdout
        assert "starting flexvm serve" in out and f"creating {vm}" in out
        assert "running" in out and "10.0.2.15" in out, "state and address are shown"
        assert f"flexvm: ready name={vm}" in out, "the console tail shows the guest's readiness line"
        assert vm in domains()

        # The API as the README and up.sh show it: HTTPS, trusting the CA the server made.
        ca = home / "tls" / "ca.pem"
        assert f"curl --cacert {ca} " in out and f"https://127.0.0.1:{port}/v1/vms" in out
        assert (home / "server.url").read_text().strip() == f"https://127.0.0.1:{port}"
        token = (home / "token").read_text().strip()
        listed = subprocess.run(
            ["curl", "-fsS", "--cacert", str(ca), "-H", f"Authorization: Bearer {token}",
             f"https://127.0.0.1:{port}/v1/vms"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert vm in {v["name"] for v in json.loads(listed.stdout)}

        # The VM is stopped behind the platform's back; a second `make up` reuses the server and
        # image and brings the VM back.
        server.ok("vm", "stop", vm)
        second = run_up(env)
        assert second.returncode == 0, second.stderr + second.stdout
        assert "already running" in second.stdout
        assert "building the tiny image" not in second.stdout and f"creating {vm}" not in second.stdout
        assert f"starting {vm}" in second.stdout
        assert server.ok("vm", "show", vm, "-o", "json").json()["power_state"] == "running"

        # The first VM, the tiny image and this machine's own host are removed (the server
        # registers `local` only at its first start): a third `make up` puts each back.
        server.ok("vm", "delete", vm)
        server.ok("image", "delete", "tiny")
        server.ok("host", "remove", "local")
        assert "not found" in server.cli("host", "show", "local").stderr
        third = run_up(env)
        assert third.returncode == 0, third.stderr + third.stdout
        assert "already running" in third.stdout
        assert "registering this machine as host local" in third.stdout
        assert "building the tiny image" in third.stdout and f"creating {vm}" in third.stdout
        assert server.ok("host", "show", "local", "-o", "json").json()["state"] == "up"
        assert server.ok("vm", "show", vm, "-o", "json").json()["power_state"] == "running"
        assert vm in domains()

        # The server stopped: a fourth `make up` starts it again, and finds everything else there.
        stop_server(home)
        fourth = run_up(env)
        assert fourth.returncode == 0, fourth.stderr + fourth.stdout
        assert "starting flexvm serve" in fourth.stdout
        for repair in ("registering", "building the tiny image", f"creating {vm}", f"starting {vm}"):
            assert repair not in fourth.stdout, fourth.stdout
        assert server.ok("vm", "show", vm, "-o", "json").json()["power_state"] == "running"
    finally:
        if (home / "token").exists():
            result = server.cli("vm", "delete", vm)
            assert result.returncode == 0 or "not found" in result.stderr, result.stderr
            server.cli("image", "delete", "tiny")
        stop_server(home)
    assert vm not in domains()


def stop_server(home: Path) -> None:
    """SIGTERM to the server up.sh started (by the PID it recorded), and wait for it to go."""
    pid_file = home / "server.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    if not Path(f"/proc/{pid}").exists():
        return
    os.kill(pid, signal.SIGTERM)
    wait_for(
        lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(),
        20,
        "the server started by up.sh to stop",
    )
