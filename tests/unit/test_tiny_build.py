"""Pure parts of the tiny-image builder: module ordering, the cpio writer, kernel choice."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from flexvm.errors import ImageError
from flexvm.images.tiny.build import (
    GUEST_DIR,
    NewcArchive,
    find_debian_kernel,
    module_load_order,
    module_name,
)

# A slice of Debian 6.1's modules.dep (one line per module); its lines are not in load order.
VIRTIO = "kernel/drivers/virtio"
MODULES_DEP = (
    "\n".join(
        [
            "kernel/drivers/acpi/button.ko:",
            f"{VIRTIO}/virtio.ko: {VIRTIO}/virtio_ring.ko",
            f"{VIRTIO}/virtio_ring.ko:",
            f"{VIRTIO}/virtio_pci_modern_dev.ko:",
            f"{VIRTIO}/virtio_pci_legacy_dev.ko:",
            f"{VIRTIO}/virtio_pci.ko: {VIRTIO}/virtio_pci_legacy_dev.ko"
            f" {VIRTIO}/virtio_pci_modern_dev.ko {VIRTIO}/virtio.ko {VIRTIO}/virtio_ring.ko",
            f"kernel/drivers/char/hw_random/virtio-rng.ko.xz: {VIRTIO}/virtio.ko {VIRTIO}/virtio_ring.ko",
            "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko"
            f" kernel/net/core/failover.ko {VIRTIO}/virtio.ko {VIRTIO}/virtio_ring.ko",
            "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko",
            "kernel/net/core/failover.ko:",
        ]
    )
    + "\n"
)


def names(paths: list[str]) -> list[str]:
    return [module_name(p) for p in paths]


def test_module_name_normalises_like_the_kernel() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert module_name("kernel/drivers/net/virtio_net.ko") == "virtio_net"


def test_every_module_comes_after_its_dependencies() -> None:
    order = names(module_load_order(MODULES_DEP, ["virtio_net", "virtio_pci", "button"]))
    assert sorted(order) == sorted(
        [
            "virtio_ring",
            "virtio",
            "failover",
            "net_failover",
            "virtio_net",
            "virtio_pci_legacy_dev",
            "virtio_pci_modern_dev",
            "virtio_pci",
            "button",
        ]
    )
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_net")
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    assert order.index("virtio_pci_modern_dev") < order.index("virtio_pci")
    assert len(order) == len(set(order))  # shared dependencies load once


def test_optional_and_builtin_modules() -> None:
    order = names(
        module_load_order(MODULES_DEP, ["button", "evdev"], optional=["virtio_rng", "absent"], builtin=["evdev"])
    )
    assert order == ["button", "virtio_ring", "virtio", "virtio_rng"]


def test_missing_required_module_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="virtio_blk"):
        module_load_order(MODULES_DEP, ["virtio_blk"])


def test_dependency_cycle_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="cycle"):
        module_load_order("a.ko: b.ko\nb.ko: a.ko\n", ["a"])


def read_newc(data: bytes) -> list[tuple[str, int, tuple[int, int], bytes]]:
    """Minimal reader: (name, mode, (rdevmajor, rdevminor), data) per entry, trailer included."""
    entries, pos = [], 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size
        pos += -pos % 4
        entries.append((name, mode, rdev, body))
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries


def test_newc_archive_round_trips() -> None:
    archive = NewcArchive()
    archive.add_dir("bin")
    archive.add_file("bin/hello", b"hi\n", 0o755)
    archive.add_symlink("bin/sh", "busybox")
    archive.add_char_device("dev/console", 5, 1)
    data = archive.finish()
    assert len(data) % 4 == 0
    entries = read_newc(data)
    assert [e[0] for e in entries] == ["bin", "bin/hello", "bin/sh", "dev/console", "TRAILER!!!"]
    _, mode, _, body = entries[1]
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o755 and body == b"hi\n"
    assert stat.S_ISLNK(entries[2][1]) and entries[2][3] == b"busybox"
    assert stat.S_ISCHR(entries[3][1]) and entries[3][2] == (5, 1)


def test_newc_add_tree_lists_parents_first(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/x").write_text("x")
    (tmp_path / "bin").symlink_to("usr/lib")
    archive = NewcArchive()
    archive.add_tree(tmp_path)
    assert [e[0] for e in read_newc(archive.finish())] == [
        "bin",
        "usr",
        "usr/lib",
        "usr/lib/x",
        "TRAILER!!!",
    ]


def fake_kernel(root: Path, version: str) -> None:
    (root / "boot").mkdir(exist_ok=True)
    (root / "boot" / f"vmlinuz-{version}").write_bytes(b"")
    (root / "modules" / version).mkdir(parents=True)
    (root / "modules" / version / "modules.dep").write_text("")


def test_find_debian_kernel_prefers_the_newest_cloud_kernel(tmp_path: Path) -> None:
    for version in ("6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", "6.5.0-1-amd64"):
        fake_kernel(tmp_path, version)
    (tmp_path / "boot/vmlinuz-6.9.0-1-cloud-amd64").write_bytes(b"")  # no modules: unusable
    kernel = find_debian_kernel(tmp_path / "boot", tmp_path / "modules")
    assert kernel.version == "6.1.0-10-cloud-amd64"
    assert kernel.modules_dir == tmp_path / "modules/6.1.0-10-cloud-amd64"


def test_find_debian_kernel_falls_back_to_any_flavour(tmp_path: Path) -> None:
    fake_kernel(tmp_path, "6.1.0-10-amd64")
    assert find_debian_kernel(tmp_path / "boot", tmp_path / "modules").version == "6.1.0-10-amd64"


def test_no_kernel_names_the_package_to_install(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    with pytest.raises(ImageError, match="linux-image-cloud-amd64"):
        find_debian_kernel(tmp_path / "boot", tmp_path / "modules")


def test_guest_scripts_are_shipped() -> None:
    shipped = {p.name for p in GUEST_DIR.glob("*.sh")}
    assert {"init.sh", "stage2.sh", "lib.sh", "http.sh", "dhcp.sh", "powerbutton.sh"} <= shipped
