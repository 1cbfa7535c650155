"""Which address a project's next NIC gets on a network: the choice, as pure functions.

Each project's guests take addresses from blocks of the range that are its own (see
``model.network``). A DHCP server keeps a lease for a MAC after its reservation is gone and will not
give that address to another MAC while the lease lasts, so a freed address is reused last:

1. the next unused address after where one of the project's blocks last stopped, oldest block first;
2. else a block no project holds and no reserved address lies in, round the range from the last
   address handed out (addresses reserved before projects had blocks keep theirs from being used);
3. else the project's own blocks again from the start (their longest-freed addresses first);
4. else a block of another project in which nothing is reserved now: it changes hands. Where its
   old owner's filter still lets it through, the new owner's guests' filters refuse that traffic.

A block has at most 16 addresses (``model.network.block_prefix``), so every step is cheap even on a
range of 65536.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flexvm.model.network import Block, Network, block_prefix, candidate_blocks


@dataclass(frozen=True)
class Choice:
    cidr: str
    address: str
    block: str = "own"  # "own", "new" (a free block) or "taken" (an idle block of another project)


def choose_address(network: Network, project: str, blocks: list[Block], used: set[str]) -> Choice | None:
    """The address for ``project``'s next NIC; None when the range has nothing left for it.
    ``blocks`` are the network's, oldest first; ``used`` every address reserved on it."""
    own = [b for b in blocks if b.project == project]
    found = _next_unused(network, own, used, wrap=False)
    if found is not None:
        return Choice(*found)
    free = _free_block(network, {b.cidr for b in blocks}, used)
    if free is not None:
        found = _next_unused(network, [Block(free, project)], used, wrap=False)
        if found is not None:
            return Choice(*found, block="new")
    found = _next_unused(network, own, used, wrap=True)
    if found is not None:
        return Choice(*found)
    taken = _blocks_in_use(network, used)
    for block in blocks:
        if block.project != project and _base(block.cidr) not in taken:
            found = _next_unused(network, [block], used, wrap=True)
            if found is not None:
                return Choice(*found, block="taken")
    return None


def usable_in(network: Network, cidr: str) -> list[str]:
    """The block's addresses a guest may be given, in order (not the gateway, not the subnet's own two)."""
    start, end = int(ipaddress.IPv4Address(network.range_start)), int(ipaddress.IPv4Address(network.range_end))
    subnet = ipaddress.IPv4Network(network.subnet)
    unusable = {network.gateway}
    if subnet.prefixlen < 31:
        unusable |= {str(subnet.network_address), str(subnet.broadcast_address)}
    return [
        str(address)
        for address in ipaddress.IPv4Network(cidr)
        if start <= int(address) <= end and str(address) not in unusable
    ]


def _next_unused(network: Network, blocks: list[Block], used: set[str], *, wrap: bool) -> tuple[str, str] | None:
    for block in blocks:
        inside = usable_in(network, block.cidr)
        after = inside.index(block.cursor) + 1 if block.cursor in inside else 0
        order = inside[after:] + (inside[:after] if wrap else [])
        address = next((ip for ip in order if ip not in used), None)
        if address is not None:
            return block.cidr, address
    return None


def _free_block(network: Network, held: set[str], used: set[str]) -> str | None:
    taken = _blocks_in_use(network, used)
    candidates = candidate_blocks(network)
    last = int(ipaddress.IPv4Address(network.last_allocated)) if network.last_allocated else -1
    start = next((i for i, cidr in enumerate(candidates) if _base(cidr) > last), 0)
    for cidr in candidates[start:] + candidates[:start]:
        if cidr not in held and _base(cidr) not in taken and usable_in(network, cidr):
            return cidr
    return None


def _blocks_in_use(network: Network, used: set[str]) -> set[int]:
    """The base of every block (of the network's size) in which some address is reserved."""
    mask = (0xFFFFFFFF << (32 - block_prefix(network))) & 0xFFFFFFFF
    return {int(ipaddress.IPv4Address(ip)) & mask for ip in used}


def _base(cidr: str) -> int:
    return int(ipaddress.IPv4Network(cidr).network_address)
