"""Compute services: VM lifecycle, hosts, images, sizes, and the operations they run as."""
