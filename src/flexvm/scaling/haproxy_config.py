"""What flexvm's HAProxy is told, as pure functions: the configuration file and the server-state file.

Nothing here starts a process or opens a socket; ``flexvm.scaling.haproxy`` does that.

Two files are rendered:

- the configuration (``render_config``): one ``fe_<set>`` frontend and one ``be_<set>`` backend per
  scale set, every server health-checked (``check inter 1s fall 2 rise 2``);
- the server-state file (``merge_server_state``), which HAProxy reads at every start and reload
  (``load-server-state-from-file global``). It carries the states of the servers HAProxy already
  knew (UP/DOWN, health counters, MAINT/DRAIN set through the runtime API) across reloads, and it is
  how a *new* server starts DOWN: HAProxy 2.6 starts every checked server UP (its health counter at
  ``rise``, "will fall down at first failure") and has no per-server initial state (``init-state``
  arrived in 3.1). So flexvm writes a line for each server HAProxy has not seen yet, or has seen at
  another address, saying "stopped, health 0": HAProxy loads it and the server joins only after
  ``rise`` passing checks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flexvm.errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # "." for project keys (team-a.web1)
PROBE_PATH_RE = re.compile(r"^/[\x21-\x7e]*$")  # printable, no spaces: it becomes one config word

ADMIN_SOCKET = "admin.sock"
MASTER_SOCKET = "master.sock"
STATE_FILE = "server-state"
CONFIG_FILE = "haproxy.cfg"
PID_FILE = "haproxy.pid"

#: How every server is checked. ``fastinter`` shortens the checks while a server is between states,
#: so a new server that passed its first probe is UP half a second later, and a failing one is out
#: within ~1.5 s.
SERVER_CHECK = "check inter 1s fastinter 500ms fall 2 rise 2"

#: Fields of a version-1 ``show servers state`` line (management guide, 9.3).
STATE_FIELDS = (
    *("be_id", "be_name", "srv_id", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state"),
    *("srv_uweight", "srv_iweight", "srv_time_since_last_change", "srv_check_status", "srv_check_result"),
    *("srv_check_health", "srv_check_state", "srv_agent_state", "bk_f_forced_id", "srv_f_forced_id"),
    *("srv_fqdn", "srv_port", "srvrecord", "srv_use_ssl", "srv_check_port", "srv_check_addr"),
    *("srv_agent_addr", "srv_agent_port"),
)
_ADDR, _PORT = STATE_FIELDS.index("srv_addr"), STATE_FIELDS.index("srv_port")


@dataclass(frozen=True)
class Backend:
    """One instance behind a frontend; ``name`` is the VM's name (the HAProxy server name)."""

    name: str
    address: str
    port: int


@dataclass(frozen=True)
class Frontend:
    """One scale set's load balancer: where it listens and the instances it spreads requests over."""

    name: str
    bind_address: str
    port: int
    backend_port: int
    backends: tuple[Backend, ...]
    probe_path: str = "/"

    @property
    def backend_name(self) -> str:
        return f"be_{self.name}"

    @property
    def frontend_name(self) -> str:
        return f"fe_{self.name}"


def check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidInput(field, f"'{value}' must be 1-64 letters, digits, '-', '_' or '.'")
    return value


def _check_port(field: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidInput(field, f"{value!r} must be a port number from 1 to 65535")


def _check_ip(field: str, value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError as err:
        raise InvalidInput(field, f"'{value}' must be an IPv4 or IPv6 address") from err


def validate(frontends: Sequence[Frontend]) -> None:
    """Refuse what HAProxy would reject or silently misread (names become config words)."""
    names: set[str] = set()
    binds: set[tuple[str, int]] = set()
    for i, fe in enumerate(frontends):
        where = f"frontends[{i}]"
        check_name(f"{where}.name", fe.name)
        if fe.name in names:
            raise InvalidInput(f"{where}.name", f"'{fe.name}' is used by two frontends")
        names.add(fe.name)
        bind = _check_ip(f"{where}.bind_address", fe.bind_address)
        _check_port(f"{where}.port", fe.port)
        _check_port(f"{where}.backend_port", fe.backend_port)
        if (str(bind), fe.port) in binds:  # HAProxy binds with SO_REUSEPORT: a clash would not fail
            raise InvalidInput(f"{where}.port", f"{fe.bind_address}:{fe.port} is bound by another frontend")
        binds.add((str(bind), fe.port))
        if not PROBE_PATH_RE.match(fe.probe_path):
            raise InvalidInput(f"{where}.probe_path", f"'{fe.probe_path}' must start with '/' and have no spaces")
        servers: set[str] = set()
        for j, be in enumerate(fe.backends):
            check_name(f"{where}.backends[{j}].name", be.name)
            if be.name in servers:
                raise InvalidInput(f"{where}.backends[{j}].name", f"'{be.name}' appears twice in '{fe.name}'")
            servers.add(be.name)
            _check_ip(f"{where}.backends[{j}].address", be.address)
            _check_port(f"{where}.backends[{j}].port", be.port)


def _endpoint(address: str, port: int) -> str:
    # HAProxy splits address and port at the last colon, so a bare IPv6 address works as is.
    return f"{ipaddress.ip_address(address)}:{port}"


GLOBAL_AND_DEFAULTS = """\
# Written by flexvm on every change; edits here are lost. One frontend and one backend per scale set.
global
    master-worker
    # The runtime API; 'expose-fd listeners' lets a reloaded worker take the listening sockets over
    # from the old one, so no connection attempt is refused during a reload.
    stats socket {run_dir}/{admin} mode 600 level admin expose-fd listeners
    stats timeout 30s
    server-state-file {run_dir}/{state}
    # An old worker keeps serving the requests it had when a reload came; this bounds how long.
    hard-stop-after 30s
    maxconn 4096

defaults
    mode http
    load-server-state-from-file global
    # A request whose connection to a server fails (it is going away) is tried again, on another server.
    retries 3
    option redispatch
    # One request per server connection: a drained server has no idle connection left behind, so
    # its session count reaches 0 as soon as its last response is sent.
    option http-server-close
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 2s
    timeout queue 10s
    timeout check 2s
"""


def render_config(frontends: Sequence[Frontend], run_dir: Path) -> str:
    """The whole HAProxy configuration for these frontends (validated first)."""
    validate(frontends)
    out = [GLOBAL_AND_DEFAULTS.format(run_dir=Path(run_dir), admin=ADMIN_SOCKET, state=STATE_FILE)]
    for fe in sorted(frontends, key=lambda f: f.name):
        out.append(
            f"frontend {fe.frontend_name}\n"
            f"    bind {_endpoint(fe.bind_address, fe.port)}\n"
            f"    default_backend {fe.backend_name}\n"
        )
        lines = [
            f"backend {fe.backend_name}",
            "    balance roundrobin",
            f"    option httpchk GET {fe.probe_path}",
            "    http-check expect status 200",
        ]
        lines += [f"    server {be.name} {_endpoint(be.address, be.port)} {SERVER_CHECK}" for be in fe.backends]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _parse_state_lines(text: str) -> dict[tuple[str, str], list[str]]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "1":  # only version 1 exists; anything else is ignored
        return {}
    found = {}
    for line in lines[1:]:
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) <= _PORT:
            continue
        found[(fields[1], fields[3])] = fields
    return found


def new_server_state(backend: str, server: Backend) -> list[str]:
    """A state line for a server HAProxy has not checked yet: stopped, health 0, check status INI.

    (Check status 0, "unknown", crashed HAProxy 2.6.12's worker at its first check; INI is what a
    fresh server reports anyway.)
    """
    values = {
        "be_id": "0",  # ids are not compared when the global file is loaded; names are the key
        "be_name": backend,
        "srv_id": "0",
        "srv_name": server.name,
        "srv_addr": str(ipaddress.ip_address(server.address)),
        "srv_op_state": "0",  # SRV_ST_STOPPED
        "srv_admin_state": "0",
        "srv_uweight": "1",
        "srv_iweight": "1",
        "srv_time_since_last_change": "0",
        "srv_check_status": "1",  # HCHK_STATUS_INI
        "srv_check_result": "0",  # CHK_RES_UNKNOWN
        "srv_check_health": "0",
        "srv_check_state": "6",  # CHK_ST_CONFIGURED | CHK_ST_ENABLED
        "srv_agent_state": "0",
        "bk_f_forced_id": "0",
        "srv_f_forced_id": "0",
        "srv_fqdn": "-",
        "srv_port": str(server.port),
        "srvrecord": "-",
        "srv_use_ssl": "0",
        "srv_check_port": "0",
        "srv_check_addr": "-",
        "srv_agent_addr": "-",
        "srv_agent_port": "0",
    }
    return [values[name] for name in STATE_FIELDS]


def merge_server_state(saved: str, frontends: Iterable[Frontend]) -> str:
    """The state file for the next start or reload of HAProxy with ``frontends``.

    ``saved`` is the last ``show servers state`` dump (or the previous file). A server keeps its saved
    line only when it is at the same address and port; HAProxy would otherwise restore the saved
    port over the configured one, and a reused VM name is a new instance. Every other server gets a
    "stopped" line, so it receives no request before it passes ``rise`` checks. Servers no longer
    configured are dropped.
    """
    known = _parse_state_lines(saved)
    out = ["1", "# " + " ".join(STATE_FIELDS)]
    for fe in sorted(frontends, key=lambda f: f.name):
        for be in fe.backends:
            fields = known.get((fe.backend_name, be.name))
            same_place = (
                fields is not None
                and fields[_ADDR] == str(ipaddress.ip_address(be.address))
                and fields[_PORT] == str(be.port)
            )
            line = fields if same_place and fields is not None else new_server_state(fe.backend_name, be)
            out.append(" ".join(line))
    return "\n".join(out) + "\n"
