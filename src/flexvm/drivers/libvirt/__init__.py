"""The libvirt driver. ``import libvirt`` happens only in connection.py, guarded, so the rest of
flexvm (and the pure XML builder) imports on machines without libvirt-python."""
