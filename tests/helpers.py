"""Driving a real flexvm server as a user would: a `flexvm serve` process and the `flexvm` CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

VENV_BIN = Path(sys.executable).parent
FLEXVM = str(VENV_BIN / "flexvm")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _finished(response: httpx.Response) -> dict[str, Any] | None:
    """The operation once it has ended; None while it runs, or while the server answers 503
    (its database busy: a paused server's transaction, say), which it says to retry."""
    if response.status_code == 503:
        return None
    operation = response.json()
    return operation if operation["status"] in ("succeeded", "failed", "canceled") else None


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until ``condition()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass
class Cli:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class FlexvmServer:
    """A `flexvm serve` process with its own home, port and (optionally) settings.

    It serves HTTPS with the certificate it makes at first start, as a user's server does; the
    CLI it runs trusts that CA from the home, and ``api()`` does the same. ``plain_http`` starts it
    with --plain-http instead (on loopback)."""

    home: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    plain_http: bool = False
    serve_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA the server made (`curl --cacert` takes it), or the one FLEXVM_CA_FILE names."""
        named = self.env_extra.get("FLEXVM_CA_FILE")
        return Path(named) if named else self.home / "tls" / "ca.pem"

    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to trust this server: its CA (True for plain HTTP)."""
        return True if self.plain_http else ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {"FLEXVM_HOME": str(self.home), "FLEXVM_PORT": str(self.port), "FLEXVM_URL": self.url, "COLUMNS": "200"}
        )
        for name in ("FLEXVM_TOKEN", "FLEXVM_CA_FILE", "FLEXVM_PLAIN_HTTP", "FLEXVM_TLS_CERT", "FLEXVM_TLS_KEY"):
            env.pop(name, None)
        env.update(self.env_extra)
        return env

    def start(self, timeout: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "server.log").open("ab")
        args = [FLEXVM, "serve", *(("--plain-http",) if self.plain_http else ()), *self.serve_args]
        self.proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if not self.plain_http and not self.ca_file.exists():
                return False  # made at the server's first start, before it listens
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1, verify=self.verify()).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout, "the flexvm server to answer")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        """Die as a crash would: SIGKILL, no cleanup."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        path = self.home / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    @property
    def token(self) -> str:
        return (self.home / "token").read_text().strip()

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
            verify=self.verify(),
        )

    def cli(self, *args: str, timeout: float = 300.0) -> Cli:
        done = subprocess.run(
            [FLEXVM, *args], env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        return Cli(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, timeout: float = 300.0) -> Cli:
        result = self.cli(*args, timeout=timeout)
        assert result.returncode == 0, (
            f"flexvm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
        return result

    def wait_operation(self, operation_id: str, timeout: float = 180.0) -> dict[str, Any]:
        with self.api() as api:
            return wait_for(
                lambda: _finished(api.get(f"/operations/{operation_id}")),
                timeout,
                f"operation {operation_id}",
            )


@contextlib.contextmanager
def lab_server(home: Path, *lab_args: str, env: dict[str, str] | None = None) -> Iterator[FlexvmServer]:
    """A server with no local host, a lab of its own (``flexvm lab up`` with ``lab_args``) and the
    tiny image; the lab is taken down and the server stopped afterwards, also on failure."""
    from flexvm.lab import Lab

    server = FlexvmServer(home, {"FLEXVM_LIBVIRT_URI": "", "FLEXVM_READY_TIMEOUT": "90", **(env or {})})
    server.start()
    try:
        server.ok("lab", "up", *lab_args)
        server.ok("image", "build", "tiny")
        yield server
    finally:
        server.cli("lab", "down", "--force")
        Lab(server.home / "lab").down()  # whatever the CLI could not do
        server.stop()


def vm_of(server: FlexvmServer, name: str) -> dict[str, Any]:
    return dict(server.ok("vm", "show", name, "-o", "json").json())


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def domains() -> set[str]:
    return {line.strip() for line in virsh("list", "--all", "--name").splitlines() if line.strip()}


def pool_volumes(pool: str) -> set[str]:
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "vol-list", pool], capture_output=True, text=True, timeout=60
    ).stdout
    names = set()
    for line in out.splitlines()[2:]:
        parts = line.split()
        if parts:
            names.add(parts[0])
    return names


def console_lines(text: str, prefix: str) -> list[dict[str, str]]:
    """Every console line starting with ``prefix`` (e.g. 'flexvm: ready'), parsed into key=value fields."""
    found = []
    for line in text.splitlines():
        if line.startswith(prefix):
            found.append(dict(tok.split("=", 1) for tok in line.split() if "=" in tok))
    return found


def import_tiny_copy(
    source: FlexvmServer,
    target: FlexvmServer,
    tiny: str,
    name: str,
    *extra: str,
    ready_marker: str | None = None,
    cmdline_extra: str = "",
) -> None:
    """Register the files of ``source``'s tiny image as image ``name`` of ``target`` (which may be the
    same server), with another readiness marker, more kernel parameters or `image import` options."""
    image = source.ok("image", "show", tiny, "-o", "json").json()
    store = source.home / "images"
    target.ok(
        "image", "import", name, "--disk", str(store / f"{tiny}.qcow2"),
        "--kernel", str(store / image["kernel_file"]), "--initrd", str(store / image["initrd_file"]),
        "--cmdline", f"{image['cmdline']} {cmdline_extra}".strip(),
        "--ready-marker", ready_marker or image["ready_marker"], *extra,
    )  # fmt: skip
