"""A real `flexvm serve` (on the fake host: no libvirt) serving HTTPS on a free loopback port, and
the `flexvm` CLI finding it and trusting its CA through FLEXVM_HOME alone; plain HTTP when asked,
on loopback, and refused anywhere else before the port is bound; the operator's own certificate."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from flexvm.cli.client import ApiClient
from flexvm.config import Settings
from tests.helpers import FLEXVM, Cli, FlexvmServer, free_port
from tests.unit.tls_helpers import operator_pair, other_key

FAKE_HOST = {"FLEXVM_LIBVIRT_URI": ""}


def cli(server: FlexvmServer, *args: str, **env: str) -> Cli:
    """The CLI as a user on this machine runs it: FLEXVM_HOME only (no URL, no token, no CA)."""
    full = {k: v for k, v in server.env.items() if k not in ("FLEXVM_URL", "FLEXVM_PORT")}
    done = subprocess.run(
        [FLEXVM, *args], env={**full, **env}, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    return Cli(done.returncode, done.stdout, done.stderr)


def assert_one_error_line(result: Cli, words: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr, result.stderr


def served_certificate(port: int) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())


def serve_refused(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEXVM_HOME": str(home), **FAKE_HOST}
    env.pop("FLEXVM_PLAIN_HTTP", None)
    return subprocess.run(
        [FLEXVM, "serve", *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def started() -> Iterator[list[FlexvmServer]]:
    """Servers a test started, stopped (by PID) at its end whatever happened."""
    servers: list[FlexvmServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def start(started: list[FlexvmServer], server: FlexvmServer) -> FlexvmServer:
    started.append(server)
    server.start()
    return server


def test_the_server_serves_https_and_the_cli_trusts_its_ca(tmp_path: Path, started: list[FlexvmServer]) -> None:
    server = start(started, FlexvmServer(tmp_path / "home", dict(FAKE_HOST)))
    assert (server.home / "server.url").read_text().strip() == f"https://127.0.0.1:{server.port}"
    assert server.ca_file.exists()
    served = served_certificate(server.port)
    served.verify_directly_issued_by(x509.load_pem_x509_certificate(server.ca_file.read_bytes()))

    listed = cli(server, "host", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert listed.json() == []
    with server.api() as api:
        assert api.get("/vms").json() == []
    assert f"CA in {server.ca_file}" in server.log_tail()

    # Plain HTTP to it gets no answer; the CLI says so in one line, and what to use.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    plain = cli(server, "vm", "list", FLEXVM_URL=f"http://127.0.0.1:{server.port}")
    assert_one_error_line(plain, "use an https:// URL")

    # Trusting another CA, the CLI refuses the certificate, naming the CA file it tried.
    other = operator_pair(tmp_path / "other")
    untrusted = cli(server, "vm", "list", FLEXVM_CA_FILE=str(other.ca_file))
    assert_one_error_line(untrusted, f"has a certificate that the CA in {other.ca_file} does not vouch for")
    assert "FLEXVM_CA_FILE" in untrusted.stderr

    missing = cli(server, "vm", "list", FLEXVM_CA_FILE=str(tmp_path / "absent.pem"))
    assert_one_error_line(missing, f"cannot load the CA file {tmp_path / 'absent.pem'}")


def test_a_second_start_reuses_the_ca(tmp_path: Path, started: list[FlexvmServer]) -> None:
    server = start(started, FlexvmServer(tmp_path / "home", dict(FAKE_HOST)))
    ca, key = server.ca_file.read_bytes(), (server.home / "tls" / "ca-key.pem").read_bytes()
    served = served_certificate(server.port)
    server.stop()
    again = start(started, FlexvmServer(server.home, dict(FAKE_HOST)))
    assert again.ca_file.read_bytes() == ca and (again.home / "tls" / "ca-key.pem").read_bytes() == key
    assert served_certificate(again.port) == served, "the server certificate too: its names and dates still fit"
    assert cli(again, "vm", "list").returncode == 0


def test_plain_http_on_loopback_when_asked(tmp_path: Path, started: list[FlexvmServer]) -> None:
    server = start(started, FlexvmServer(tmp_path / "home", dict(FAKE_HOST), plain_http=True))
    assert (server.home / "server.url").read_text().strip() == f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200
    assert not (server.home / "tls").exists()
    listed = cli(server, "vm", "list")
    assert listed.returncode == 0, listed.stderr
    assert "plain HTTP" in server.log_tail()


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--plain-http", "--listen", "0.0.0.0"), {}), (("--listen", "192.0.2.10"), {"FLEXVM_PLAIN_HTTP": "1"})],
)
def test_plain_http_off_loopback_is_refused_before_binding(tmp_path: Path, args: tuple[str, ...], env: dict) -> None:  # type: ignore[type-arg]
    port = free_port()
    home = tmp_path / "home"
    done = subprocess.run(
        [FLEXVM, "serve", *args, "--port", str(port)],
        env={**os.environ, "FLEXVM_HOME": str(home), **FAKE_HOST, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    listen = args[args.index("--listen") + 1]
    assert f"error: plain_http: refused to listen on {listen} without TLS" in done.stderr
    assert "use TLS" in done.stderr
    # Refused before anything: no database, no token, no certificate, no URL; the port stays free.
    assert not home.exists() or not any(home.iterdir())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_the_operators_certificate_is_served(tmp_path: Path, started: list[FlexvmServer]) -> None:
    pair = operator_pair(tmp_path / "own")
    server = start(
        started,
        FlexvmServer(
            tmp_path / "home",
            {**FAKE_HOST, "FLEXVM_CA_FILE": str(pair.ca_file)},  # what the helper's own clients trust
            serve_args=("--tls-cert", str(pair.cert_file), "--tls-key", str(pair.key_file)),
        ),
    )
    assert served_certificate(server.port) == x509.load_pem_x509_certificate(pair.cert_file.read_bytes())
    assert not (server.home / "tls").exists(), "no CA is made when the operator gives a certificate"

    trusting = cli(server, "vm", "list", FLEXVM_CA_FILE=str(pair.ca_file))
    assert trusting.returncode == 0, trusting.stderr
    without = {k: v for k, v in server.env.items() if k != "FLEXVM_CA_FILE"}
    done = subprocess.run([FLEXVM, "vm", "list"], env=without, capture_output=True, text=True, timeout=60)
    assert_one_error_line(Cli(done.returncode, done.stdout, done.stderr), "the default CAs does not vouch for")


def test_a_mismatched_or_missing_key_is_refused_at_start(tmp_path: Path) -> None:
    pair = operator_pair(tmp_path / "own")
    wrong = serve_refused(
        tmp_path / "home", "--tls-cert", str(pair.cert_file), "--tls-key", str(other_key(tmp_path / "k"))
    )
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert f"error: tls_key: {tmp_path / 'k'} is not the key of the certificate in {pair.cert_file}" in wrong.stderr

    absent = serve_refused(tmp_path / "home", "--tls-cert", str(pair.cert_file), "--tls-key", str(tmp_path / "none"))
    assert absent.returncode == 1 and f"error: tls_key: cannot read {tmp_path / 'none'}" in absent.stderr

    half = serve_refused(tmp_path / "home", "--tls-cert", str(pair.cert_file))
    assert half.returncode == 1 and "error: tls_key: missing" in half.stderr
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())


def test_without_a_server_file_the_cli_tries_https_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLEXVM_URL", "FLEXVM_CA_FILE", "FLEXVM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env({"FLEXVM_HOME": str(tmp_path), "FLEXVM_PORT": "8471"})
    client = ApiClient.from_settings(settings)
    assert client.url == "https://127.0.0.1:8471" and client.ca_file is None
    settings.tls_dir.mkdir()
    operator = operator_pair(tmp_path / "own")
    settings.ca_file.write_bytes(operator.ca_file.read_bytes())
    assert ApiClient.from_settings(settings).ca_file == settings.ca_file
    monkeypatch.setenv("FLEXVM_CA_FILE", str(operator.ca_file))
    assert ApiClient.from_settings(settings).ca_file == operator.ca_file
