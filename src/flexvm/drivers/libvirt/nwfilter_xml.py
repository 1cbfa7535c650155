"""libvirt network filters (nwfilter) for a project's isolation, built from an ``Isolation``.

Two filters, both defined on every host whose guests use them:

- ``flexvm-guest``, the same everywhere: a NIC sends only from its own MAC and address (``$MAC``
  and ``$IP``, the parameters its domain XML gives), except the DHCP request and ARP probe a guest
  makes before it has an address. Without this a guest could borrow another project's address.
- ``flexvm.<network>.<project>``, one per project and network: it includes the first, then lets
  IPv4 and ARP through to and from the project's own blocks (and a gateway the range takes in),
  refuses them to and from the rest of the range (other projects' guests), lets them through to
  and from the addresses outside the range (gateway, DHCP server, hosts: the network's own), and
  drops every other kind of frame (IPv6 among them, which would otherwise reach a neighbour by its
  link-local address).

Every rule is an ebtables rule on the host's bridge (the ``mac``, ``ip`` and ``arp`` protocols of
nwfilter), so nothing depends on br_netfilter. A rule's priority orders it: lower runs first.
Redefining a filter updates it in place and re-applies it to every NIC using it, provided the
definition carries the UUID the host has for it (libvirt refuses a second filter of one name with
another): the driver passes the host's, and a new filter gets one derived from its name.
"""

from __future__ import annotations

import ipaddress
import uuid
import xml.etree.ElementTree as ET

from flexvm.model.network import Isolation

GUEST_FILTER = "flexvm-guest"
_UUIDS = uuid.UUID("8f0c2b7e-3f7a-4b3e-9d7c-2a51f0e6c4d1")  # the namespace of flexvm's filter UUIDs

# Priorities: spoofing checks, then own blocks, then the other projects' space, then the rest.
SPOOF, OWN, OTHERS, OUTSIDE, EVERYTHING_ELSE = -700, 100, 200, 300, 1000


def filter_uuid(name: str) -> str:
    return str(uuid.uuid5(_UUIDS, name))


def _filter(name: str, uuid_text: str | None) -> ET.Element:
    root = ET.Element("filter", name=name, chain="root")
    ET.SubElement(root, "uuid").text = uuid_text or filter_uuid(name)
    return root


def _rule(parent: ET.Element, action: str, direction: str, priority: int, layer: str, **match: str) -> None:
    """One rule: ``layer`` is nwfilter's protocol element (mac, ip, arp), ``match`` its attributes."""
    rule = ET.SubElement(parent, "rule", action=action, direction=direction, priority=str(priority))
    ET.SubElement(rule, layer, match)


def guest_filter_xml(uuid_text: str | None = None) -> str:
    root = _filter(GUEST_FILTER, uuid_text)
    # direction "out" is what the guest sends, "in" what it is sent.
    _rule(root, "drop", "out", SPOOF, "mac", match="no", srcmacaddr="$MAC")
    dhcp_request = {"srcipaddr": "0.0.0.0", "protocol": "udp", "srcportstart": "68", "dstportstart": "67"}
    _rule(root, "accept", "out", SPOOF + 1, "ip", **dhcp_request)
    _rule(root, "drop", "out", SPOOF + 2, "ip", match="no", srcipaddr="$IP")
    _rule(root, "drop", "out", SPOOF + 3, "arp", match="no", arpsrcmacaddr="$MAC")
    _rule(root, "accept", "out", SPOOF + 4, "arp", arpsrcipaddr="0.0.0.0")
    _rule(root, "drop", "out", SPOOF + 5, "arp", match="no", arpsrcipaddr="$IP")
    return ET.tostring(root, encoding="unicode")


def _both_ways(root: ET.Element, action: str, priority: int, cidr: str) -> None:
    block = ipaddress.IPv4Network(cidr)
    address, mask = str(block.network_address), str(block.prefixlen)
    _rule(root, action, "out", priority, "ip", dstipaddr=address, dstipmask=mask)
    _rule(root, action, "in", priority, "ip", srcipaddr=address, srcipmask=mask)
    _rule(root, action, "out", priority, "arp", arpdstipaddr=address, arpdstipmask=mask)
    _rule(root, action, "in", priority, "arp", arpsrcipaddr=address, arpsrcipmask=mask)


def project_filter_xml(isolation: Isolation, uuid_text: str | None = None) -> str:
    root = _filter(isolation.name, uuid_text)
    ET.SubElement(root, "filterref", filter=GUEST_FILTER)
    for cidr in (*isolation.own, *isolation.shared):
        _both_ways(root, "accept", OWN, cidr)
    for cidr in isolation.guest_space:
        _both_ways(root, "drop", OTHERS, cidr)
    _rule(root, "accept", "inout", OUTSIDE, "ip")
    _rule(root, "accept", "inout", OUTSIDE, "arp")
    _rule(root, "drop", "inout", EVERYTHING_ELSE, "mac")
    return ET.tostring(root, encoding="unicode")
