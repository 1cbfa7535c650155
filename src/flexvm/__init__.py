"""flexvm: a self-hosted pool of real virtual machines, Azure-style, on libvirt."""

__version__ = "0.1.0"
