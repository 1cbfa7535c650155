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
