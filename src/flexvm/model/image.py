"""Images: bootable disks every VM's OS disk is a copy-on-write overlay of."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Image:
    name: str
    format: str  # "qcow2" or "raw": what qemu-img detected, never what the user claimed
    disk_file: str  # file name inside the image store
    virtual_size: int
    file_size: int
    sha256: str
    created_at: datetime
    kernel_file: str | None = None  # direct kernel boot, when the image brings its own kernel
    initrd_file: str | None = None
    cmdline: str | None = None
    # A line the guest prints on its serial console when it is up. None: "running" is all we know.
    ready_marker: str | None = None
    cloud_init: bool = False  # give VMs made from it a NoCloud seed (hostname, keys, user data)
    description: str = ""
    requires: list[str] = field(default_factory=list)  # host features it needs, e.g. ["kvm"]

    @property
    def files(self) -> list[str]:
        return [name for name in (self.disk_file, self.kernel_file, self.initrd_file) if name]

    @property
    def volume_prefix(self) -> str:
        """Image files on a host are named by content, so a changed image is never mistaken for an old one."""
        return f"{self.name}-{self.sha256[:12]}"
