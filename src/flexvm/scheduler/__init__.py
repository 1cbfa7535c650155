"""Placement: pure functions over a snapshot of hosts. No I/O, no database, no libvirt."""
