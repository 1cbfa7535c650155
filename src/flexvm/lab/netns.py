"""Network namespaces, veth pairs, bridges, addresses and routes, all through ``ip``.

Every function names the namespace it acts in; ``None`` means the root namespace, where the
lab only ever adds one veth end (with the gateway address) and one blackhole route.
Removal functions are idempotent: removing what is not there is not an error.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from flexvm.lab import system

NETNS_DIR = Path("/run/netns")


def _ip(netns: str | None, *args: str, check: bool = True) -> str:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return system.run([*prefix, *args], check=check).stdout


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def names(prefix: str) -> list[str]:
    """Network namespaces whose name starts with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add(name: str) -> None:
    """A new, empty network namespace (its loopback still down)."""
    system.run(["ip", "netns", "add", name])


def delete(name: str) -> None:
    if exists(name):
        system.run(["ip", "netns", "delete", name])


def pids(name: str) -> list[int]:
    """Processes in that namespace (what ``ip netns pids`` finds scanning /proc)."""
    if not exists(name):
        return []
    out = system.run(["ip", "netns", "pids", name], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def inode(name: str) -> tuple[int, int] | None:
    """(device, inode) of the namespace, to compare with /proc/PID/ns/net."""
    try:
        st = (NETNS_DIR / name).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def add_bridge(netns: str, name: str) -> None:
    # No STP and no forward delay: a new port (a guest's tap) forwards at once.
    _ip(netns, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")


def add_veth(name: str, netns: str | None, peer: str, peer_netns: str) -> None:
    """A veth pair made directly in its two namespaces (never passing through the root one)."""
    where = ["netns", netns] if netns else []
    _ip(None, "link", "add", name, *where, "type", "veth", "peer", "name", peer, "netns", peer_netns)


def enslave(netns: str, port: str, bridge: str) -> None:
    _ip(netns, "link", "set", port, "master", bridge)


def add_address(netns: str | None, device: str, address: str, prefix: int) -> None:
    _ip(netns, "addr", "add", f"{address}/{prefix}", "dev", device)


def up(netns: str | None, device: str) -> None:
    _ip(netns, "link", "set", device, "up")


def down(netns: str | None, device: str) -> None:
    _ip(netns, "link", "set", device, "down")


def is_up(netns: str | None, device: str) -> bool:
    """Whether the link is administratively up (its flags say UP)."""
    line = _ip(netns, "-o", "link", "show", "dev", device, check=False)
    flags = line.partition("<")[2].partition(">")[0].split(",")
    return "UP" in flags


def link_exists(netns: str | None, device: str) -> bool:
    return bool(_ip(netns, "-o", "link", "show", "dev", device, check=False).strip())


def delete_link(netns: str | None, device: str) -> None:
    if link_exists(netns, device):
        _ip(netns, "link", "delete", device)


def root_links(prefix: str) -> list[str]:
    """Interfaces in the root namespace whose name starts with ``prefix``."""
    found = json.loads(_ip(None, "-j", "link", "show") or "[]")
    return sorted(link["ifname"] for link in found if link.get("ifname", "").startswith(prefix))


def add_blackhole(subnet: str, metric: int) -> bool:
    """Add the route unless it is there; whether this call added it (and so owns it)."""
    if _has_blackhole(subnet, metric):
        return False
    _ip(None, "route", "add", "blackhole", subnet, "metric", str(metric))
    return True


def delete_blackhole(subnet: str, metric: int) -> None:
    if _has_blackhole(subnet, metric):
        _ip(None, "route", "delete", "blackhole", subnet, "metric", str(metric))


def _has_blackhole(subnet: str, metric: int) -> bool:
    routes = json.loads(_ip(None, "-j", "route", "show", "type", "blackhole", subnet) or "[]")
    return any(r.get("metric", 0) == metric for r in routes)


def route_device(address: str) -> str | None:
    """The interface the root namespace would send a packet for ``address`` out of (None if it
    would not send it at all). Check this before talking to a lab address: it must be the lab
    link, never the machine's own network."""
    done = system.run(["ip", "-j", "route", "get", address], check=False)
    if done.returncode != 0:
        return None
    routes = json.loads(done.stdout or "[]")
    if not routes or routes[0].get("type", "unicast") != "unicast":
        return None
    return routes[0].get("dev")


def machine_networks() -> list[tuple[ipaddress.IPv4Network, str]]:
    """Every IPv4 network the root namespace knows: routes of all tables, and addresses with their
    prefix, each with where it was seen. The lab subnet must overlap none of them."""
    found: list[tuple[ipaddress.IPv4Network, str]] = []
    for route in json.loads(_ip(None, "-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default"):
            continue
        try:
            network = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        found.append((network, f"route {dst} dev {route.get('dev', route.get('type', '?'))}"))
    for link in json.loads(_ip(None, "-j", "-4", "addr", "show") or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            network = ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
            found.append((network, f"address {info['local']}/{info['prefixlen']} on {link.get('ifname', '?')}"))
    return found
