"""The API's certificates (api/tls.py): the CA and server certificate made at first start and
reused after, the names the server certificate holds, the files' modes, when the server
certificate is made again; the operator's own pair checked before the server starts; and the rule
that plain HTTP is served on loopback only."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flexvm.api import tls
from flexvm.config import Settings
from flexvm.errors import InvalidInput
from tests.unit.tls_helpers import operator_pair, other_key

FILES = {"ca.pem": 0o644, "ca-key.pem": 0o600, "server.pem": 0o644, "server-key.pem": 0o600}


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(path: Path) -> set[str]:
    san = cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)) | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def contents(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"FLEXVM_HOME": str(tmp_path / "home")})


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that takes every bit from group and others: ca.pem must still be 0644."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


# --- the generated CA and server certificate ------------------------------------------------


@pytest.mark.usefixtures("strict_umask")
def test_first_start_makes_a_ca_and_a_server_certificate_it_signed(settings: Settings) -> None:
    served = tls.server_tls(settings)
    assert served == tls.ServerTls(
        settings.tls_dir / "server.pem", settings.tls_dir / "server-key.pem", settings.tls_dir / "ca.pem"
    )
    assert settings.ca_file == settings.tls_dir / "ca.pem"
    for name, mode in FILES.items():
        assert stat.S_IMODE((settings.tls_dir / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in settings.tls_dir.iterdir() if not p.name.startswith(".")) == sorted(FILES)

    ca, server = cert(settings.ca_file), cert(served.cert_file)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert {"127.0.0.1", "::1", "localhost", socket.gethostname().lower()} <= names(served.cert_file)
    assert server.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)

    # What a client does with them: OpenSSL's own check of the chain and of the name.
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(served.cert_file, served.key_file)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_later_start_reuses_the_ca_and_the_certificate(settings: Settings) -> None:
    tls.server_tls(settings)
    first = contents(settings.tls_dir)
    tls.server_tls(settings)
    assert contents(settings.tls_dir) == first


def test_a_new_listen_address_gets_a_new_server_certificate_from_the_same_ca(settings: Settings) -> None:
    tls.server_tls(settings)
    first = contents(settings.tls_dir)
    # Documentation addresses (RFC 5737): named in a certificate, never connected to.
    tls.ensure_certificates(settings.tls_dir, "192.0.2.10")
    second = contents(settings.tls_dir)
    assert second["ca.pem"] == first["ca.pem"] and second["ca-key.pem"] == first["ca-key.pem"]
    assert second["server.pem"] != first["server.pem"] and second["server-key.pem"] != first["server-key.pem"]
    assert "192.0.2.10" in names(settings.tls_dir / "server.pem")

    # Another server on this home listens elsewhere: the names before are kept, so the two do not
    # take turns making certificates; a name already there makes none.
    tls.ensure_certificates(settings.tls_dir, "flexvm.example")
    assert {"192.0.2.10", "flexvm.example", "127.0.0.1"} <= names(settings.tls_dir / "server.pem")
    third = contents(settings.tls_dir)
    tls.ensure_certificates(settings.tls_dir, "192.0.2.10")
    assert contents(settings.tls_dir) == third


def test_a_wildcard_address_adds_no_name() -> None:
    dns, ips = tls.wanted_names("0.0.0.0")
    assert ips == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert "localhost" in dns and "0.0.0.0" not in dns
    assert tls.wanted_names("::")[1] == ips
    assert ipaddress.ip_address("fd00::5") in tls.wanted_names("fd00::5")[1]


def test_a_server_certificate_near_its_end_is_made_again_but_not_the_ca(settings: Settings) -> None:
    tls.server_tls(settings)
    first = contents(settings.tls_dir)
    ends = cert(settings.tls_dir / "server.pem").not_valid_after_utc
    tls.ensure_certificates(settings.tls_dir, "127.0.0.1", now=ends - dt.timedelta(days=31))
    assert contents(settings.tls_dir) == first, "31 days left: kept"
    tls.ensure_certificates(settings.tls_dir, "127.0.0.1", now=ends - dt.timedelta(days=29))
    second = contents(settings.tls_dir)
    assert second["ca.pem"] == first["ca.pem"] and second["server.pem"] != first["server.pem"]
    assert cert(settings.tls_dir / "server.pem").not_valid_after_utc > ends


@pytest.mark.parametrize("damage", ["server-key.pem", "server.pem"])
def test_a_damaged_or_mismatched_server_pair_is_made_again(settings: Settings, damage: str) -> None:
    tls.server_tls(settings)
    first = contents(settings.tls_dir)
    if damage == "server.pem":
        (settings.tls_dir / damage).write_text("not a certificate\n")
    else:
        other_key(settings.tls_dir / damage)
    tls.server_tls(settings)
    second = contents(settings.tls_dir)
    assert second["ca.pem"] == first["ca.pem"]
    cert(settings.tls_dir / "server.pem").verify_directly_issued_by(cert(settings.ca_file))
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
        settings.tls_dir / "server.pem", settings.tls_dir / "server-key.pem"
    )


def test_a_lost_ca_key_makes_a_new_ca_and_a_server_certificate_it_signed(settings: Settings) -> None:
    tls.server_tls(settings)
    first = contents(settings.tls_dir)
    (settings.tls_dir / "ca-key.pem").unlink()
    tls.server_tls(settings)
    second = contents(settings.tls_dir)
    assert second["ca.pem"] != first["ca.pem"] and second["server.pem"] != first["server.pem"]
    cert(settings.tls_dir / "server.pem").verify_directly_issued_by(cert(settings.ca_file))


def test_the_keys_are_ecdsa_and_unencrypted(settings: Settings) -> None:
    tls.server_tls(settings)
    for name in ("ca-key.pem", "server-key.pem"):
        key = serialization.load_pem_private_key((settings.tls_dir / name).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)


# --- plain HTTP, and the operator's own pair ------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST"])
def test_plain_http_on_loopback_is_served_as_asked(settings: Settings, host: str) -> None:
    assert tls.is_loopback(host)
    assert tls.server_tls(replace(settings, plain_http=True, listen_host=host)) is None
    assert not settings.tls_dir.exists(), "no certificate is made for plain HTTP"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "fd00::5", "flexvm.example", "localhost.example"])
def test_plain_http_anywhere_else_is_refused_naming_the_address(settings: Settings, host: str) -> None:
    assert not tls.is_loopback(host)
    with pytest.raises(InvalidInput) as caught:
        tls.server_tls(replace(settings, plain_http=True, listen_host=host))
    assert caught.value.field == "plain_http"
    assert f"refused to listen on {host} without TLS" in caught.value.message
    assert "use TLS" in caught.value.message
    assert not settings.tls_dir.exists()


def test_the_operators_pair_is_served_and_nothing_is_made(settings: Settings, tmp_path: Path) -> None:
    pair = operator_pair(tmp_path / "own")
    served = tls.server_tls(replace(settings, tls_cert=pair.cert_file, tls_key=pair.key_file))
    assert served == tls.ServerTls(pair.cert_file, pair.key_file, None)
    assert not settings.tls_dir.exists()


def test_the_operators_pair_from_the_environment(tmp_path: Path) -> None:
    pair = operator_pair(tmp_path / "own")
    env = {"FLEXVM_HOME": str(tmp_path), "FLEXVM_TLS_CERT": str(pair.cert_file), "FLEXVM_TLS_KEY": str(pair.key_file)}
    assert Settings.from_env(env).tls_pair() == (pair.cert_file, pair.key_file)


@pytest.mark.parametrize("given", ["tls_cert", "tls_key"])
def test_half_a_pair_is_refused_naming_the_missing_half(settings: Settings, tmp_path: Path, given: str) -> None:
    pair = operator_pair(tmp_path / "own")
    half = replace(settings, **{given: pair.cert_file if given == "tls_cert" else pair.key_file})
    with pytest.raises(InvalidInput) as caught:
        tls.server_tls(half)
    missing = "tls_key" if given == "tls_cert" else "tls_cert"
    assert caught.value.field == missing and "give both or none" in caught.value.message


def test_plain_http_with_the_operators_pair_is_refused(settings: Settings, tmp_path: Path) -> None:
    pair = operator_pair(tmp_path / "own")
    with pytest.raises(InvalidInput) as caught:
        tls.server_tls(replace(settings, plain_http=True, tls_cert=pair.cert_file, tls_key=pair.key_file))
    assert caught.value.field == "plain_http"


def test_a_pair_that_will_not_serve_is_refused_naming_field_and_file(settings: Settings, tmp_path: Path) -> None:
    pair = operator_pair(tmp_path / "own")

    def refusal(cert_file: Path, key_file: Path) -> InvalidInput:
        with pytest.raises(InvalidInput) as caught:
            tls.server_tls(replace(settings, tls_cert=cert_file, tls_key=key_file))
        return caught.value

    wrong = refusal(pair.cert_file, other_key(tmp_path / "other-key.pem"))
    assert wrong.field == "tls_key" and f"is not the key of the certificate in {pair.cert_file}" in wrong.message

    missing = refusal(pair.cert_file, tmp_path / "absent-key.pem")
    assert missing.field == "tls_key" and f"cannot read {tmp_path / 'absent-key.pem'}" in missing.message
    assert refusal(tmp_path / "absent.pem", pair.key_file).field == "tls_cert"

    swapped = refusal(pair.key_file, pair.cert_file)
    assert swapped.field == "tls_cert" and "holds no PEM certificate" in swapped.message

    encrypted = tmp_path / "encrypted-key.pem"
    key = serialization.load_pem_private_key(pair.key_file.read_bytes(), password=None)
    encryption = serialization.BestAvailableEncryption(b"secret")
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    locked = refusal(pair.cert_file, encrypted)
    assert locked.field == "tls_key" and "is encrypted" in locked.message

    old = operator_pair(tmp_path / "old", expired=True)
    expired = refusal(old.cert_file, old.key_file)
    assert expired.field == "tls_cert" and "expired on" in expired.message
    assert not settings.tls_dir.exists()


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_plain_http_from_the_environment(text: str, value: bool) -> None:
    assert Settings.from_env({"FLEXVM_PLAIN_HTTP": text}).plain_http is value


def test_a_bad_plain_http_value_is_refused_naming_the_variable() -> None:
    with pytest.raises(InvalidInput) as caught:
        Settings.from_env({"FLEXVM_PLAIN_HTTP": "maybe"})
    assert caught.value.field == "FLEXVM_PLAIN_HTTP" and "'maybe'" in caught.value.message


def test_url_hosts() -> None:
    assert tls.url_host("::1") == "[::1]" and tls.url_host("127.0.0.1") == "127.0.0.1"
    assert tls.url_host("flexvm.example") == "flexvm.example"
