"""HTTPS for the API: a private CA made at first start and a server certificate it signs, or the
operator's own certificate and key; plain HTTP only on loopback, and only when asked.

The files flexvm makes, under ``$FLEXVM_HOME/tls``::

    ca.pem           the CA's certificate (0644): what the CLI, and `curl --cacert`, trust
    ca-key.pem       the CA's key (0600): signs server certificates, never leaves this directory
    server.pem       the server's certificate (0644): 127.0.0.1, ::1, localhost, this machine's
                     name, and the listen address when it is another one
    server-key.pem   the server's key (0600)

Later starts reuse them. The server certificate alone is made again when the listen address is
not among its names (the names it had are kept, so servers on one home listening on different
addresses do not take turns) or when it expires within ``RENEW_BEFORE``; the CA only when it is
missing, unreadable as a CA, or itself about to expire — clients elsewhere would have to be given
the new ``ca.pem``.

Every file is written to a temporary name created with its final mode, then renamed, so no key is
readable by others even for a moment and a reader never sees half a file. Servers sharing one
home (several on one PostgreSQL, on one machine) take a lock while they look and write.

Keys are ECDSA P-256: made in a millisecond, and accepted by curl, OpenSSL and Python's ssl.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flexvm.config import Settings
from flexvm.errors import FlexvmError, InvalidInput

log = logging.getLogger(__name__)

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
# A certificate is valid from a little before it was made, so a client whose clock is slightly
# behind does not refuse it as not yet valid.
BACKDATE = dt.timedelta(hours=1)

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
ALWAYS_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ServerTls:
    """What uvicorn serves HTTPS with, and the CA a client should trust (None: the operator's own
    certificate, whose CA flexvm does not know)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: addresses only this machine can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: an IPv6 address in brackets."""
    address = _ip(host)
    return f"[{address}]" if address is not None and address.version == 6 else host


def server_tls(settings: Settings) -> ServerTls | None:
    """How the server described by ``settings`` serves: None for plain HTTP, else its certificate.

    Called before the server opens anything or binds its port, so every refusal comes first:
    plain HTTP off loopback, half an operator's pair, or a pair that does not load."""
    operator_pair = settings.tls_pair()
    if settings.plain_http:
        if operator_pair is not None:
            raise InvalidInput("plain_http", "cannot be combined with tls_cert and tls_key: serve one or the other")
        if not is_loopback(settings.listen_host):
            raise InvalidInput(
                "plain_http",
                f"refused to listen on {settings.listen_host} without TLS: plain HTTP is served on loopback only "
                "(127.0.0.0/8, ::1, localhost); use TLS there (the generated certificate, or tls_cert and tls_key)",
                details={"listen": settings.listen_host},
            )
        return None
    if operator_pair is not None:
        cert_file, key_file = operator_pair
        check_operator_pair(cert_file, key_file)
        return ServerTls(cert_file, key_file, None)
    return ensure_certificates(settings.tls_dir, settings.listen_host)


# --- the operator's own certificate ---------------------------------------------------------


def check_operator_pair(cert_file: Path, key_file: Path, now: dt.datetime | None = None) -> None:
    """Refuse, naming the field and the file, a certificate or key that the server could not serve."""
    now = now or _now()
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_file, "tls_cert"))  # the first: the server's own
    except ValueError as err:
        raise InvalidInput("tls_cert", f"{cert_file} holds no PEM certificate") from err
    try:
        key = serialization.load_pem_private_key(_read(key_file, "tls_key"), password=None)
    except TypeError as err:  # cryptography's word for "this key needs a password"
        raise InvalidInput("tls_key", f"{key_file} is encrypted; the server needs it unencrypted") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise InvalidInput("tls_key", f"{key_file} holds no PEM private key") from err
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise InvalidInput("tls_key", f"{key_file} is not the key of the certificate in {cert_file}")
    if cert.not_valid_after_utc <= now:
        raise InvalidInput("tls_cert", f"the certificate in {cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    # What uvicorn will do with them: anything else OpenSSL refuses is said now, not at the bind.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except ssl.SSLError as err:
        raise InvalidInput("tls_cert", f"OpenSSL refused {cert_file} with {key_file}: {err}") from err


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InvalidInput(field, f"cannot read {path}: {err.strerror or err}") from err


# --- the generated CA and server certificate ------------------------------------------------


def ensure_certificates(directory: Path, listen_host: str, now: dt.datetime | None = None) -> ServerTls:
    """The CA and a server certificate for ``listen_host`` in ``directory``: reused, or made."""
    now = now or _now()
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / ".lock"):
        ca = _load_ca(directory, now)
        if ca is None:
            ca = _new_ca(directory, now)
        ca_cert, ca_key = ca
        current = _load_server(directory, ca_cert)
        dns, ips = wanted_names(listen_host)
        if current is None:
            _new_server(directory, ca_cert, ca_key, dns, ips, now)
        else:
            have_dns, have_ips = _names(current)
            missing = (dns - have_dns) | {str(ip) for ip in ips - have_ips}
            if missing or current.not_valid_after_utc - now < RENEW_BEFORE:
                why = f"for {', '.join(sorted(missing))}" if missing else "before it expires"
                log.info("making a new server certificate %s", why)
                _new_server(directory, ca_cert, ca_key, dns | have_dns, ips | have_ips, now)
    return ServerTls(directory / "server.pem", directory / "server-key.pem", directory / "ca.pem")


def wanted_names(listen_host: str) -> tuple[set[str], set[IpAddress]]:
    """The names (DNS, IP) a server certificate must hold for a server listening on ``listen_host``.

    A wildcard address (0.0.0.0, ::) is no name a client connects to: clients elsewhere use this
    machine's name, which is included (its other addresses are not: looking them up could leave
    loopback, and an operator who needs them gives their own certificate)."""
    dns = {"localhost"}
    hostname = socket.gethostname()
    if hostname and hostname.isascii() and _ip(hostname) is None:
        dns.add(hostname.lower())
    ips: set[IpAddress] = set(ALWAYS_IPS)
    address = _ip(listen_host)
    if address is None:
        if listen_host.isascii() and listen_host.lower() not in LOOPBACK_NAMES:
            dns.add(listen_host.lower().rstrip("."))
    elif not address.is_unspecified:
        ips.add(address)
    return dns, ips


def _load_ca(directory: Path, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert_file, key_file = directory / "ca.pem", directory / "ca-key.pem"
    loaded = _load_pair(cert_file, key_file)
    if loaded is None:
        return None
    cert, key = loaded
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        log.warning("the CA in %s expires on %s: making a new one", cert_file, f"{cert.not_valid_after_utc:%Y-%m-%d}")
        return None
    return cert, key


def _load_server(directory: Path, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """The server certificate, if it is whole, matches its key and was signed by this CA."""
    loaded = _load_pair(directory / "server.pem", directory / "server-key.pem")
    if loaded is None:
        return None
    cert, _ = loaded
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return None
    return cert


def _load_pair(cert_file: Path, key_file: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """A certificate and its key as flexvm wrote them; None when either is absent, damaged, or
    they do not belong together (they are then made again). A file flexvm may not read is an error:
    replacing it would lock out whoever can."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except PermissionError as err:
        raise FlexvmError(f"cannot read {err.filename}: permission denied") from err
    except (ValueError, TypeError, UnsupportedAlgorithm):
        log.warning("%s or %s is damaged: making them again", cert_file, key_file)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _public_der(key.public_key()) != _public_der(
        cert.public_key()
    ):
        log.warning("%s is not the key of %s: making them again", key_file, cert_file)
        return None
    return cert, key


def _new_ca(directory: Path, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flexvm"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"flexvm CA on {_short_hostname()}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key first: a CA certificate on disk without its key would be taken as whole next time.
    _write_atomically(directory / "ca-key.pem", _private_pem(key), 0o600)
    _write_atomically(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("made a private CA for the API in %s (clients trust this file)", directory / "ca.pem")
    return cert, key


def _new_server(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns: set[str],
    ips: set[IpAddress],
    now: dt.datetime,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(dns)]
    names += [x509.IPAddress(ip) for ip in sorted(ips, key=lambda ip: (ip.version, int(ip)))]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _short_hostname())]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_atomically(directory / "server-key.pem", _private_pem(key), 0o600)
    _write_atomically(directory / "server.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _names(cert: x509.Certificate) -> tuple[set[str], set[IpAddress]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    ips = {ip for ip in san.get_values_for_type(x509.IPAddress) if isinstance(ip, IpAddress)}
    return set(san.get_values_for_type(x509.DNSName)), ips


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """``data`` at ``path`` with ``mode`` from the moment the file exists (see auth.ensure_token)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits from a public file; set exactly
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ip(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _short_hostname() -> str:
    return (socket.gethostname() or "flexvm")[:64]  # a common name is at most 64 characters


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
