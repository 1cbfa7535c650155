"""Where everything of a lab goes: addresses, interface and namespace names, file paths.

Pure functions of the spec and the lab root, so ``down`` can recompute every name ``up`` used
from ``state.json`` alone, and unit tests can check the layout without root or ``ip``.

Addresses, as offsets from the subnet's network address (a /24 shown)::

    .1            gateway: the root namespace's end of the lab link
    .2            the switch's bridge (dnsmasq answers DHCP from it)
    .11 .. .18    lab1 .. lab8 (br0 inside each host's namespace)
    .32 .. .239   dhcp_range: the platform's to hand out as reservations
    .240 .. .254  dynamic_range: leased by dnsmasq to NICs without a reservation
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flexvm.errors import InvalidInput
from flexvm.lab.model import MAX_HOSTS, LabHost, LabSpec, LabState

SWITCH_NETNS = "flexvm-labsw"
HOST_NETNS_PREFIX = "flexvm-lab"
SWITCH_BRIDGE = "labsw"  # inside the switch namespace
GATEWAY_LINK = "flexlab-gw"  # the only interface the lab puts in the root namespace
GATEWAY_PEER = "gw"  # its other end, a port of the switch bridge
HOST_UPLINK = "uplink"  # a host's end of its link to the switch, a port of its br0
HOST_BRIDGE = "br0"
# Held by the root namespace while a lab is up, below the lab link's own route: if that link
# ever vanishes, traffic for the lab subnet is dropped here instead of leaving by the default route.
BLACKHOLE_METRIC = 4242
LIBVIRT_TCP_PORT = 16509

MIN_PREFIX, MAX_PREFIX = 16, 26  # a /26 still fits gateway, switch, 8 hosts and both ranges
FIRST_HOST_OFFSET = 10
RESERVED_FROM_OFFSET = 32
DYNAMIC_SIZE = 15
PRIVATE_SPACE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))

# Where every lab host sees the lab's shared storage: inside each host's own /var/lib/libvirt
# (nothing is made in the machine's), bind-mounted from the one directory ``LabPlan.shared_dir``.
SHARED_PATH = "/var/lib/libvirt/flexvm-shared/lab-shared"
SHARED_STORAGE_NAME = "lab-shared"

# A host's private directories, each bind-mounted over the system's in the host's mount namespace.
PRIVATE_DIRS = (
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("etc", "/etc/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)


@dataclass(frozen=True)
class HostPlan:
    index: int  # 1-based
    name: str
    address: str
    netns: str
    switch_port: str  # its link's name inside the switch namespace
    root: Path

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    def private_dir(self, key: str) -> Path:
        return self.root / key

    @property
    def run_dir(self) -> Path:
        """The host's /run/libvirt, seen from the root namespace."""
        return self.root / "run"

    @property
    def libvirtd_pid_file(self) -> Path:
        return self.run_dir / "libvirtd.pid"

    @property
    def virtlogd_pid_file(self) -> Path:
        return self.run_dir / "virtlogd.pid"

    def pid_file(self, kind: str) -> Path:
        """Where a daemon of the host (libvirtd, virtlogd, virtlockd) writes its PID."""
        return self.run_dir / f"{kind}.pid"

    @property
    def qemu_pid_dir(self) -> Path:
        return self.run_dir / "qemu"

    @property
    def hosts_file(self) -> Path:
        return self.root / "hosts"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemons.log"

    def to_host(self, pids: dict[str, int] | None = None) -> LabHost:
        return LabHost(
            name=self.name,
            address=self.address,
            uri=self.uri,
            netns=self.netns,
            bridge=HOST_BRIDGE,
            root=self.root,
            pids=dict(pids or {}),
        )


@dataclass(frozen=True)
class LabPlan:
    root: Path
    subnet: ipaddress.IPv4Network
    gateway: str
    switch_address: str
    dhcp_range: tuple[str, str]
    dynamic_range: tuple[str, str]
    hosts: tuple[HostPlan, ...]
    shared: bool = False

    @property
    def shared_dir(self) -> Path:
        """The shared storage's directory, seen from the root namespace."""
        return self.root / "shared"

    @property
    def prefix(self) -> int:
        return self.subnet.prefixlen

    @property
    def netmask(self) -> str:
        return str(self.subnet.netmask)

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def switch_dir(self) -> Path:
        return self.root / "switch"

    @property
    def dhcp_hosts_dir(self) -> Path:
        return self.root / "dhcp-hosts"

    @property
    def dnsmasq_pid_file(self) -> Path:
        return self.switch_dir / "dnsmasq.pid"

    @property
    def leases_file(self) -> Path:
        return self.switch_dir / "dnsmasq.leases"

    @property
    def dnsmasq_log(self) -> Path:
        return self.switch_dir / "dnsmasq.log"

    @property
    def ns_dir(self) -> Path:
        """Where the hosts' mount and UTS namespaces are pinned (bind mounts of nsfs files)."""
        return self.root / "ns"

    def host(self, name: str) -> HostPlan | None:
        return next((h for h in self.hosts if h.name == name), None)

    def owned_paths(self) -> list[Path]:
        """Everything the lab creates directly under its root; ``down`` removes exactly these."""
        return [
            self.state_file,
            self.switch_dir,
            self.dhcp_hosts_dir,
            self.ns_dir,
            *(h.root for h in self.hosts),
            *([self.shared_dir] if self.shared else []),
            self.lock_file,
        ]

    def to_state(self, dnsmasq_pid: int = 0, phase: str = "starting") -> LabState:
        return LabState(
            subnet=str(self.subnet),
            switch_netns=SWITCH_NETNS,
            gateway=self.gateway,
            dhcp_range=self.dhcp_range,
            dhcp_hosts_dir=self.dhcp_hosts_dir,
            dnsmasq_pid=dnsmasq_pid,
            hosts=[h.to_host() for h in self.hosts],
            dynamic_range=self.dynamic_range,
            phase=phase,
            shared_path=SHARED_PATH if self.shared else None,
        )


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    """The subnet as a network, or InvalidInput naming the rule it breaks (no machine lookups)."""
    try:
        network = ipaddress.ip_network(subnet, strict=True)
    except ValueError as err:
        raise InvalidInput("subnet", f"'{subnet}' is not a network in CIDR form, e.g. 10.213.0.0/24 ({err})") from err
    if not isinstance(network, ipaddress.IPv4Network):
        raise InvalidInput("subnet", f"{subnet} is IPv6; the lab network is IPv4")
    if not MIN_PREFIX <= network.prefixlen <= MAX_PREFIX:
        raise InvalidInput(
            "subnet", f"{subnet} is a /{network.prefixlen}; the lab needs a /{MIN_PREFIX} to a /{MAX_PREFIX}"
        )
    if not any(network.subnet_of(space) for space in PRIVATE_SPACE):
        raise InvalidInput(
            "subnet",
            f"{subnet} is not private address space: pick one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
        )
    return network


def check_spec(spec: LabSpec) -> ipaddress.IPv4Network:
    if isinstance(spec.hosts, bool) or not isinstance(spec.hosts, int) or not 1 <= spec.hosts <= MAX_HOSTS:
        raise InvalidInput("hosts", f"must be a whole number from 1 to {MAX_HOSTS}, not {spec.hosts!r}")
    if not isinstance(spec.subnet, str):
        raise InvalidInput("subnet", f"must be a string in CIDR form, not {spec.subnet!r}")
    return parse_subnet(spec.subnet)


def check_no_overlap(subnet: ipaddress.IPv4Network, existing: Iterable[tuple[ipaddress.IPv4Network, str]]) -> None:
    """Refuse a subnet overlapping any network already on the machine (``existing``: network and
    where it was seen). Default routes (a /0) are not networks of their own and are skipped."""
    for network, where in existing:
        if network.prefixlen == 0:
            continue
        if subnet.overlaps(network):
            raise InvalidInput(
                "subnet",
                f"{subnet} overlaps {network} ({where}) already on this machine; pick a subnet no route or "
                "address uses",
                details={"overlaps": str(network), "seen_on": where},
            )


def _address(subnet: ipaddress.IPv4Network, offset: int) -> str:
    return str(subnet.network_address + offset)


def make_plan(root: Path, hosts: int, subnet: ipaddress.IPv4Network, *, shared: bool = False) -> LabPlan:
    size = subnet.num_addresses
    last_usable = size - 2  # the offset before the broadcast address
    dynamic_start = last_usable - DYNAMIC_SIZE + 1
    host_plans = tuple(
        HostPlan(
            index=i,
            name=f"lab{i}",
            address=_address(subnet, FIRST_HOST_OFFSET + i),
            netns=f"{HOST_NETNS_PREFIX}{i}",
            switch_port=f"lab{i}",
            root=root / f"lab{i}",
        )
        for i in range(1, hosts + 1)
    )
    return LabPlan(
        root=root,
        subnet=subnet,
        gateway=_address(subnet, 1),
        switch_address=_address(subnet, 2),
        dhcp_range=(_address(subnet, RESERVED_FROM_OFFSET), _address(subnet, dynamic_start - 1)),
        dynamic_range=(_address(subnet, dynamic_start), _address(subnet, last_usable)),
        hosts=host_plans,
        shared=shared,
    )


def plan_for_state(root: Path, state: LabState) -> LabPlan:
    """The plan a recorded lab was made from (``down`` needs every name, even of hosts never started)."""
    return make_plan(root, len(state.hosts), ipaddress.IPv4Network(state.subnet), shared=state.shared_path is not None)
