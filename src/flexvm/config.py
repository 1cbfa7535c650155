"""Settings, read once at the edge (the `serve` command, the CLI) and passed down explicitly.

Nothing below the edges reads the environment: services take a ``Settings``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from flexvm.errors import InvalidInput
from flexvm.model.units import GIB, parse_bytes

DEFAULT_PORT = 8470
DEFAULT_UPLOAD_MAX = 20 * GIB


def default_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/flexvm")
    return Path.home() / ".local" / "share" / "flexvm"


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    listen_host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # The host this server registers as "local" on first start; "" registers none.
    local_uri: str = "qemu:///system"
    ready_timeout: float = 120.0  # seconds a guest has to print its readiness line
    stop_timeout: float = 60.0  # graceful shutdown, before the power is pulled
    health_seconds: float = 2.0  # how often every host is checked
    health_timeout: float = 5.0  # a host that takes longer to answer has missed its check
    # A host with a fence agent that has missed its checks this long, and whose agent cannot
    # reach it either, has failed: it is fenced and its HA VMs start elsewhere.
    fail_seconds: float = 6.0
    # More hosts than this failing at once looks like a network blip, not host failures: no
    # automatic fencing or restarts, an alert instead.
    ha_max_failed_hosts: int = 1
    migration_timeout: float = 300.0  # a live migration not done by then is aborted (the guest stays)
    metrics_interval: float = 15.0  # seconds between counter readings (at least 1)
    metrics_raw_hours: float = 6.0  # raw samples kept this long; per-minute roll-ups after
    metrics_rollup_days: float = 7.0
    scaling_seconds: float = 10.0  # how often scale sets are healed, autoscale evaluated, the LB checked
    lb_bind: str = "127.0.0.1"  # where scale sets' load balancer frontends listen by default
    # Several servers on one database: an operation whose server stops renewing its lease for
    # this long is taken over by another (and the leader role likewise).
    lease_seconds: float = 15.0
    takeover_poll_seconds: float = 1.0  # how often a server looks for operations to take over
    crash_at: str = ""  # tests only: "kind:step:moment" where the server kills itself (kill -9)
    ssh_keys: tuple[str, ...] = field(default_factory=tuple)
    # The API serves HTTPS: with the operator's own certificate and key (both or neither), else
    # with one signed by a CA made at first start (tls_dir). Plain HTTP only when asked, on loopback.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    plain_http: bool = False
    upload_max_bytes: int = DEFAULT_UPLOAD_MAX  # the largest image the API takes as a request body

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def token_file(self) -> Path:
        return self.home / "token"

    @property
    def server_file(self) -> Path:
        """Where the running server writes its URL, so the CLI finds it."""
        return self.home / "server.url"

    @property
    def tls_dir(self) -> Path:
        """The CA and server certificate flexvm makes (api/tls.py)."""
        return self.home / "tls"

    @property
    def ca_file(self) -> Path:
        """The CA the CLI trusts, and `curl --cacert` takes."""
        return self.tls_dir / "ca.pem"

    def tls_pair(self) -> tuple[Path, Path] | None:
        """The operator's certificate and key, or None; one without the other is refused."""
        if self.tls_cert is None and self.tls_key is None:
            return None
        if self.tls_key is None:
            raise InvalidInput("tls_key", f"missing: the certificate {self.tls_cert} needs its key (give both or none)")
        if self.tls_cert is None:
            raise InvalidInput("tls_cert", f"missing: the key {self.tls_key} needs its certificate (give both or none)")
        return self.tls_cert, self.tls_key

    @property
    def lb_dir(self) -> Path:
        """The load balancer's config, pid file and sockets."""
        return self.home / "lb"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("FLEXVM_HOME") or default_home())
        return cls(
            home=home,
            db_url=env.get("FLEXVM_DB_URL") or f"sqlite:///{home / 'flexvm.db'}",
            listen_host=env.get("FLEXVM_LISTEN", "127.0.0.1"),
            port=_port(env.get("FLEXVM_PORT")),
            local_uri=env.get("FLEXVM_LIBVIRT_URI", "qemu:///system"),
            ready_timeout=_seconds(env, "FLEXVM_READY_TIMEOUT", 120),
            stop_timeout=_seconds(env, "FLEXVM_STOP_TIMEOUT", 60),
            health_seconds=_seconds(env, "FLEXVM_HEALTH_SECONDS", 2),
            health_timeout=_seconds(env, "FLEXVM_HEALTH_TIMEOUT", 5),
            fail_seconds=_seconds(env, "FLEXVM_FAIL_SECONDS", 6),
            ha_max_failed_hosts=int(_seconds(env, "FLEXVM_HA_MAX_FAILED_HOSTS", 1)),
            migration_timeout=_seconds(env, "FLEXVM_MIGRATION_TIMEOUT", 300),
            metrics_interval=_seconds(env, "FLEXVM_METRICS_INTERVAL", 15),
            metrics_raw_hours=_seconds(env, "FLEXVM_METRICS_RAW_HOURS", 6),
            metrics_rollup_days=_seconds(env, "FLEXVM_METRICS_ROLLUP_DAYS", 7),
            scaling_seconds=_seconds(env, "FLEXVM_SCALING_SECONDS", 10),
            lb_bind=env.get("FLEXVM_LB_BIND", "127.0.0.1"),
            lease_seconds=_seconds(env, "FLEXVM_LEASE_SECONDS", 15),
            takeover_poll_seconds=_seconds(env, "FLEXVM_TAKEOVER_POLL_SECONDS", 1),
            crash_at=env.get("FLEXVM_CRASH_AT", ""),
            tls_cert=_path(env.get("FLEXVM_TLS_CERT")),
            tls_key=_path(env.get("FLEXVM_TLS_KEY")),
            plain_http=_flag(env, "FLEXVM_PLAIN_HTTP"),
            upload_max_bytes=_size(env, "FLEXVM_UPLOAD_MAX", DEFAULT_UPLOAD_MAX),
        )


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    """A positive number from the environment, or an error naming the variable (never a traceback)."""
    text = env.get(name)
    if text is None or text == "":
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise InvalidInput(name, f"must be a positive number, got {text!r}")
    return value


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _flag(env: dict[str, str], name: str) -> bool:
    """1/true/yes or 0/false/no (or unset), else an error naming the variable."""
    text = env.get(name, "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise InvalidInput(name, f"must be 1 or 0, got {env[name]!r}")


def _size(env: dict[str, str], name: str, default: int) -> int:
    """A positive size from the environment ('20G', '512M', a bare number of bytes)."""
    text = env.get(name)
    if text is None or text == "":
        return default
    value = parse_bytes(text, name)
    if value <= 0:
        raise InvalidInput(name, f"must be a positive size, got {text!r}")
    return value


def _port(text: str | None) -> int:
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidInput("FLEXVM_PORT", f"must be a port number from 1 to 65535, got {text!r}")
    return int(text)
