"""Shared storage: a directory that every host sees at the same path (NFS, CephFS, the lab's).

A VM whose disks live there is not tied to the host that runs it: a live migration moves its
memory only, and once its host is fenced it can be started on another host from the same files.
A VM with no storage keeps its disks in its host's own instance pool, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from flexvm.errors import InvalidInput

# Where a shared directory may not be: the system's own trees, and libvirt's and flexvm's, whose
# pools already live there (a pool inside another pool would list the other's volumes as its own).
FORBIDDEN_ROOTS = tuple(
    PurePosixPath(p) for p in ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/run", "/sbin", "/sys", "/usr")
)
LIBVIRT_FLEXVM_ROOT = PurePosixPath("/var/lib/libvirt/flexvm")


@dataclass(frozen=True)
class SharedStorage:
    name: str
    path: str  # absolute, the same on every host

    @property
    def pool_name(self) -> str:
        """The libvirt storage pool each host keeps over the directory."""
        return f"flexvm-shared-{self.name}"


def check_storage_path(path: str) -> str:
    """An absolute, normalised directory path outside the system's and flexvm's own trees."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInput("path", f"{path!r} is not an absolute path: give the directory every host mounts")
    clean = PurePosixPath(path)
    if ".." in clean.parts or str(clean) != (path.rstrip("/") or "/") or any(ord(c) < 32 for c in path):
        raise InvalidInput("path", f"{path!r} is not a plain path: no '..', '.', '//' or control characters")
    if clean in FORBIDDEN_ROOTS or any(clean.is_relative_to(r) for r in FORBIDDEN_ROOTS[1:]):
        raise InvalidInput("path", f"{path!r} is a system directory; use a mount of its own, e.g. /srv/flexvm")
    if clean == LIBVIRT_FLEXVM_ROOT or clean.is_relative_to(LIBVIRT_FLEXVM_ROOT):
        raise InvalidInput("path", f"{path!r} is inside flexvm's own host pools ({LIBVIRT_FLEXVM_ROOT})")
    return str(clean)
