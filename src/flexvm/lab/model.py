"""What a lab is, as callers see it: the spec asked for, the hosts and network it runs.

Plain dataclasses with a JSON round trip (``state.json`` holds a ``LabState``); no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_HOSTS = 8
DEFAULT_SUBNET = "10.213.0.0/24"


@dataclass(frozen=True)
class LabSpec:
    hosts: int  # 1..MAX_HOSTS
    subnet: str = DEFAULT_SUBNET  # must not overlap any route or address already on the machine
    shared_storage: bool = False  # a directory every host sees at SHARED_PATH, and virtlockd on each


@dataclass
class LabHost:
    name: str  # "lab1", "lab2", ...
    address: str  # its address on the lab network, e.g. 10.213.0.11
    uri: str  # qemu+tcp://<address>/system
    netns: str  # its network namespace, e.g. "flexvm-lab1"
    bridge: str  # the bridge guests attach to inside that namespace ("br0")
    root: Path  # its private directories (run, lib, etc, log, cache)
    pids: dict[str, int] = field(default_factory=dict)  # "libvirtd", "virtlogd", "virtlockd"
    # Filled in by Lab.status(): libvirtd runs, listens on its address, and the root namespace routes there.
    alive: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "uri": self.uri,
            "netns": self.netns,
            "bridge": self.bridge,
            "root": str(self.root),
            "pids": dict(self.pids),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabHost:
        return cls(
            name=data["name"],
            address=data["address"],
            uri=data["uri"],
            netns=data["netns"],
            bridge=data["bridge"],
            root=Path(data["root"]),
            pids={k: int(v) for k, v in data.get("pids", {}).items()},
        )


@dataclass
class LabState:
    subnet: str
    switch_netns: str
    gateway: str  # the root namespace's address on the lab network
    # Addresses the platform hands out as DHCP reservations (one "MAC,IP" file per NIC in
    # dhcp_hosts_dir). dnsmasq also leases dynamic_range, disjoint from it, to NICs without one.
    dhcp_range: tuple[str, str]
    dhcp_hosts_dir: Path
    dnsmasq_pid: int
    hosts: list[LabHost]
    dynamic_range: tuple[str, str] = ("", "")
    # "up" once every host answered; "starting" while up runs, or if it was interrupted
    # (a crashed `lab up`): `down` cleans either.
    phase: str = "up"
    # What `up` made, oldest first, recorded as it made each (see ``lab.journal``): a failed
    # `up` removes exactly these, newest first.
    made: list[dict[str, Any]] = field(default_factory=list)
    # With shared storage: where every host sees it, and how it is shared (said to the user).
    shared_path: str | None = None
    shared_how: str = ""

    @property
    def daemons(self) -> tuple[str, ...]:
        """Each host's daemons, in the order they start (virtlockd only beside shared storage)."""
        return ("virtlogd", "virtlockd", "libvirtd") if self.shared_path else ("virtlogd", "libvirtd")

    def host(self, name: str) -> LabHost | None:
        return next((h for h in self.hosts if h.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "phase": self.phase,
            "subnet": self.subnet,
            "switch_netns": self.switch_netns,
            "gateway": self.gateway,
            "dhcp_range": list(self.dhcp_range),
            "dynamic_range": list(self.dynamic_range),
            "dhcp_hosts_dir": str(self.dhcp_hosts_dir),
            "dnsmasq_pid": self.dnsmasq_pid,
            "hosts": [h.to_dict() for h in self.hosts],
            "made": [dict(entry) for entry in self.made],
            "shared_path": self.shared_path,
            "shared_how": self.shared_how,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        start, end = data["dhcp_range"]
        dyn_start, dyn_end = data.get("dynamic_range", ["", ""])
        return cls(
            subnet=data["subnet"],
            switch_netns=data["switch_netns"],
            gateway=data["gateway"],
            dhcp_range=(start, end),
            dhcp_hosts_dir=Path(data["dhcp_hosts_dir"]),
            dnsmasq_pid=int(data.get("dnsmasq_pid", 0)),
            hosts=[LabHost.from_dict(h) for h in data["hosts"]],
            dynamic_range=(dyn_start, dyn_end),
            phase=data.get("phase", "up"),
            made=[dict(entry) for entry in data.get("made", [])],
            shared_path=data.get("shared_path"),
            shared_how=data.get("shared_how", ""),
        )
