"""Drivers: the boundary between flexvm and a hypervisor. See base.Driver."""

from __future__ import annotations

from flexvm.drivers.base import Driver


def connect(uri: str) -> Driver:
    """A driver for a host URI: ``fake://NAME`` for the in-memory hypervisor, anything else libvirt."""
    if uri.startswith("fake://"):
        from flexvm.drivers.fake import FakeDriver

        return FakeDriver.for_uri(uri)
    from flexvm.drivers.libvirt.driver import LibvirtDriver

    return LibvirtDriver(uri)
