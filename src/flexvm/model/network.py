"""Networks guests bridge onto, and the addresses flexvm hands out on them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flexvm.errors import InvalidInput


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

    def check(self) -> None:
        try:
            subnet = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as err:
            raise InvalidInput("subnet", f"'{self.subnet}' is not a network in CIDR form ({err})") from err
        for field_name in ("range_start", "range_end"):
            value = getattr(self, field_name)
            try:
                address = ipaddress.ip_address(value)
            except ValueError as err:
                raise InvalidInput(field_name, f"'{value}' is not an address") from err
            if address not in subnet:
                raise InvalidInput(field_name, f"{value} is outside {self.subnet}")
        if int(ipaddress.ip_address(self.range_start)) > int(ipaddress.ip_address(self.range_end)):
            raise InvalidInput("range_end", f"{self.range_end} comes before {self.range_start}")
        if self.dhcp_hosts_dir is not None and not Path(self.dhcp_hosts_dir).is_absolute():
            raise InvalidInput("dhcp_hosts_dir", "must be an absolute path")

    def addresses(self) -> list[str]:
        start, end = ipaddress.ip_address(self.range_start), ipaddress.ip_address(self.range_end)
        return [str(ipaddress.ip_address(n)) for n in range(int(start), int(end) + 1)]
