"""VM sizes: named shapes of vCPUs, memory and OS disk, Azure's catalogue plus the operator's."""

from __future__ import annotations

from dataclasses import dataclass

from flexvm.errors import InvalidInput
from flexvm.model.units import GIB, MIB, format_bytes

# Guards against typos like --memory 512 (bytes) or --vcpus 4000.
MAX_VCPUS = 512
MIN_MEMORY_MIB = 64
MAX_MEMORY_MIB = 16 * 1024 * 1024
MIN_DISK_BYTES = 64 * MIB


@dataclass(frozen=True)
class Size:
    name: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    family: str
    builtin: bool = True

    def describe(self) -> str:
        return f"{self.vcpus} vCPU, {format_bytes(self.memory_mib * MIB)} memory, {format_bytes(self.disk_bytes)} disk"


def check_shape(vcpus: int, memory_mib: int, disk_bytes: int) -> None:
    """Refuse shapes no VM could have, naming the field at fault."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise InvalidInput("vcpus", f"must be between 1 and {MAX_VCPUS}, got {vcpus}")
    if not MIN_MEMORY_MIB <= memory_mib <= MAX_MEMORY_MIB:
        raise InvalidInput("memory", f"must be between {MIN_MEMORY_MIB}M and 16T, got {memory_mib}M")
    if disk_bytes < MIN_DISK_BYTES:
        raise InvalidInput("disk", f"must be at least {format_bytes(MIN_DISK_BYTES)}, got {format_bytes(disk_bytes)}")


def _azure(name: str, vcpus: int, memory_gib: float, disk_gib: int, family: str) -> Size:
    return Size(name, vcpus, int(memory_gib * 1024), disk_gib * GIB, family)


# Azure's shapes (vCPUs, memory). Azure sizes the OS disk separately; flexvm gives each size a
# default OS disk (Azure's temporary-disk size where it has one) so a size is a complete shape.
BUILTIN_SIZES: tuple[Size, ...] = (
    _azure("Standard_B1ls", 1, 0.5, 4, "B"),
    _azure("Standard_B1s", 1, 1, 4, "B"),
    _azure("Standard_B1ms", 1, 2, 4, "B"),
    _azure("Standard_B2s", 2, 4, 8, "B"),
    _azure("Standard_B2ms", 2, 8, 16, "B"),
    _azure("Standard_B4ms", 4, 16, 32, "B"),
    _azure("Standard_D2s_v5", 2, 8, 16, "Dsv5"),
    _azure("Standard_D4s_v5", 4, 16, 32, "Dsv5"),
    _azure("Standard_D8s_v5", 8, 32, 64, "Dsv5"),
    _azure("Standard_E2s_v5", 2, 16, 16, "Esv5"),
    _azure("Standard_E4s_v5", 4, 32, 32, "Esv5"),
    _azure("Standard_F2s_v2", 2, 4, 16, "Fsv2"),
    _azure("Standard_F4s_v2", 4, 8, 32, "Fsv2"),
)
