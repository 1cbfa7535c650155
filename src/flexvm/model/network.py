"""Networks guests bridge onto, and the addresses flexvm hands out on them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flexvm.errors import InvalidInput

MAX_RANGE = 65536  # addresses in one range: enough for any pool, small enough to scan


@dataclass
class Network:
    name: str
    subnet: str  # CIDR, e.g. 10.213.0.0/24
    range_start: str  # the addresses flexvm reserves for guests, inclusive
    range_end: str
    created_at: datetime
    gateway: str | None = None
    # Where the network's DHCP server reads reservations (one 'MAC,IP' file per NIC); None when
    # DHCP is not flexvm's (the guest's reported address is then recorded as it comes).
    dhcp_hosts_dir: str | None = None
    last_allocated: str | None = None  # where the next search for a free address starts

    def check(self) -> None:
        try:
            subnet = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as err:
            raise InvalidInput("subnet", f"'{self.subnet}' is not a network in CIDR form ({err})") from err
        if not isinstance(subnet, ipaddress.IPv4Network):
            raise InvalidInput("subnet", "only IPv4 networks are supported")
        for field_name in ("range_start", "range_end", "gateway"):
            value = getattr(self, field_name)
            if value is None:
                continue
            try:
                address = ipaddress.ip_address(value)
            except ValueError as err:
                raise InvalidInput(field_name, f"'{value}' is not an address") from err
            if address not in subnet:
                raise InvalidInput(field_name, f"{value} is outside {self.subnet}")
        start, end = int(ipaddress.ip_address(self.range_start)), int(ipaddress.ip_address(self.range_end))
        if start > end:
            raise InvalidInput("range_end", f"{self.range_end} comes before {self.range_start}")
        if end - start + 1 > MAX_RANGE:
            raise InvalidInput("range_end", f"the range holds {end - start + 1} addresses; at most {MAX_RANGE}")
        if self.dhcp_hosts_dir is not None and not Path(self.dhcp_hosts_dir).is_absolute():
            raise InvalidInput("dhcp_hosts_dir", "must be an absolute path")

    @property
    def isolated(self) -> bool:
        """Whether its projects are kept apart: only where guests get the addresses flexvm reserves
        (its DHCP reservations), since each guest's filter lets it send from that address alone."""
        return self.dhcp_hosts_dir is not None

    def addresses(self) -> Iterator[str]:
        """The range in order, without the subnet's own network and broadcast addresses or the gateway."""
        subnet = ipaddress.ip_network(self.subnet)
        unusable = {self.gateway}
        if subnet.prefixlen < 31:
            unusable |= {str(subnet.network_address), str(subnet.broadcast_address)}
        start, end = int(ipaddress.ip_address(self.range_start)), int(ipaddress.ip_address(self.range_end))
        for number in range(start, end + 1):
            address = str(ipaddress.ip_address(number))
            if address not in unusable:
                yield address


# --- projects' own address blocks, and the isolation drawn from them ------------------------
#
# Guests of every project share a network's bridge; what keeps projects apart is that each one's
# guests get addresses from blocks of the range that belong to that project alone, and that every
# guest NIC carries a filter (libvirt's nwfilter, applied by each host's libvirtd) letting IPv4 and
# ARP through only to and from its own project's blocks, or from addresses outside the range (the
# gateway, the DHCP server, the hosts), and never with a forged source. A block is aligned, so a
# filter rule is one address and mask; a project grows by whole blocks, so its filter changes
# only when it takes a new one, not with every VM (see docs/decisions/0004-project-networks.md).

BLOCK_ADDRESSES = 16  # a project's share of a network grows by this many addresses at a time
MIN_BLOCKS = 4  # a range too small for this many such blocks is cut into smaller ones


def block_prefix(network: Network) -> int:
    """The prefix length of a project block on ``network``: /28, or smaller on a small range."""
    for prefix in range(32 - BLOCK_ADDRESSES.bit_length() + 1, 32):
        if len(candidate_blocks(network, prefix)) >= MIN_BLOCKS:
            return prefix
    return 32


def candidate_blocks(network: Network, prefix: int | None = None) -> list[str]:
    """Every aligned block of ``prefix`` (default: the network's) that holds part of the range,
    in order. One at an edge of the range is handed out for the part inside it: the rest of it is
    the network's own (outside the range), which every project's filter lets through anyway."""
    prefix = block_prefix(network) if prefix is None else prefix
    start = int(ipaddress.IPv4Address(network.range_start))
    end = int(ipaddress.IPv4Address(network.range_end))
    size = 1 << (32 - prefix)
    return [f"{ipaddress.IPv4Address(base)}/{prefix}" for base in range(start // size * size, end + 1, size)]


def guest_space(network: Network) -> tuple[str, ...]:
    """The range as the fewest CIDR blocks: the addresses flexvm hands to guests of any project."""
    start = ipaddress.IPv4Address(network.range_start)
    end = ipaddress.IPv4Address(network.range_end)
    return tuple(str(block) for block in ipaddress.summarize_address_range(start, end))


def shared_addresses(network: Network) -> tuple[str, ...]:
    """The addresses of the range no guest is given (gateway, the subnet's own two), as /32."""
    subnet = ipaddress.IPv4Network(network.subnet)
    start = ipaddress.IPv4Address(network.range_start)
    end = ipaddress.IPv4Address(network.range_end)
    candidates = {network.gateway, str(subnet.network_address), str(subnet.broadcast_address)} - {None}
    inside = sorted(ipaddress.IPv4Address(a) for a in candidates if a and start <= ipaddress.IPv4Address(a) <= end)
    return tuple(f"{address}/32" for address in inside)


@dataclass(frozen=True)
class Block:
    """A block of a network's range that is one project's."""

    cidr: str
    project: str
    cursor: str | None = None  # the address it last handed out


def isolation_name(network: str, project: str) -> str:
    """The filter a project's NICs on ``network`` carry, on every host (dots cannot be in either name)."""
    return f"flexvm.{network}.{project}"


@dataclass(frozen=True)
class Isolation:
    """What one project's guests on one network may exchange traffic with."""

    network: str
    project: str
    own: tuple[str, ...]  # the project's blocks, and any address it holds outside them (as /32)
    guest_space: tuple[str, ...]  # the whole range: what is neither own nor outside it is refused
    # Addresses inside the range that no guest is given and every project may reach (as /32): a
    # gateway, or the subnet's broadcast address, where the range takes them in.
    shared: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return isolation_name(self.network, self.project)
