"""ImageStore: what it lets in, what it keeps, and that a failed import leaves nothing."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from flexvm.errors import AlreadyExists, ImageError, InvalidInput
from flexvm.images import qemu_img
from flexvm.images.store import ImageStore
from flexvm.model.image import Image

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")

MIB = 1024 * 1024


# -- making small real images -----------------------------------------------------------


def run_qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def make_raw(path: Path, data_mib: int = 1, size_mib: int = 8) -> Path:
    with path.open("wb") as file:
        file.write(bytes(range(256)) * (data_mib * MIB // 256))
        file.truncate(size_mib * MIB)
    return path


def make_qcow2(path: Path, data_mib: int = 2, size_mib: int = 64) -> Path:
    raw = make_raw(path.with_name(path.name + ".src.raw"), data_mib, size_mib)
    run_qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    raw.unlink()
    return path


def make_kernel(path: Path) -> Path:
    # Enough of a bzImage for the check: the boot-protocol magic at 0x202.
    data = bytearray(4096)
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    path.write_bytes(bytes(data))
    return path


def make_initrd(path: Path) -> Path:
    path.write_bytes(gzip.compress(b"070701" + b"0" * 200))
    return path


def scribble(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    directory = tmp_path / "src"
    directory.mkdir()
    return directory


def store_contents(store: ImageStore) -> list[str]:
    """Everything in the root, hidden temporaries included."""
    return sorted(path.name for path in store.root.iterdir())


# -- the root ---------------------------------------------------------------------------


def test_root_is_created_readable_despite_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        store = ImageStore(tmp_path / "a" / "images")
    finally:
        os.umask(old)
    assert store.root.is_dir()
    assert store.root.stat().st_mode & 0o777 == 0o755


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ImageError, match="not a directory"):
        ImageStore(tmp_path / "f")


# -- importing good images ----------------------------------------------------------------


def test_import_qcow2(store: ImageStore, src: Path) -> None:
    disk = make_qcow2(src / "disk.qcow2")
    image = store.import_image("debian-12", disk, description="test image", ready_marker="READY")
    assert isinstance(image, Image)
    assert image.name == "debian-12"
    assert image.format == "qcow2"
    assert image.disk_file == "debian-12.qcow2"
    assert image.virtual_size == 64 * MIB
    assert image.sha256 == sha256_of(disk)
    assert image.file_size == disk.stat().st_size
    assert image.created_at.utcoffset() == timedelta(0)  # aware, and UTC
    assert (image.ready_marker, image.description, image.kernel_file) == ("READY", "test image", None)
    stored = store.path_of(image.disk_file)
    assert stored.read_bytes() == disk.read_bytes()
    assert stored.stat().st_mode & 0o777 == 0o644
    assert store_contents(store) == ["debian-12.qcow2"]  # no temporaries left


def test_import_raw(store: ImageStore, src: Path) -> None:
    disk = make_raw(src / "disk.img")
    image = store.import_image("tiny", disk)
    assert (image.format, image.disk_file, image.virtual_size) == ("raw", "tiny.raw", 8 * MIB)
    assert store.path_of("tiny.raw").read_bytes() == disk.read_bytes()


def test_format_is_detected_not_taken_from_the_file_name(store: ImageStore, src: Path) -> None:
    disk = make_raw(src / "lies.qcow2")
    assert store.import_image("x", disk).format == "raw"


def test_import_with_kernel_and_initrd(store: ImageStore, src: Path) -> None:
    image = store.import_image(
        "tiny",
        make_qcow2(src / "disk.qcow2"),
        kernel=make_kernel(src / "vmlinuz"),
        initrd=make_initrd(src / "initrd.img"),
        cmdline="console=ttyS0 quiet",
        cloud_init=True,
    )
    assert (image.kernel_file, image.initrd_file) == ("tiny.vmlinuz", "tiny.initrd")
    assert image.files == ["tiny.qcow2", "tiny.vmlinuz", "tiny.initrd"]
    assert store.path_of("tiny.vmlinuz").read_bytes() == (src / "vmlinuz").read_bytes()
    assert store.path_of("tiny.initrd").read_bytes() == (src / "initrd.img").read_bytes()
    assert image.cmdline == "console=ttyS0 quiet" and image.cloud_init
    assert store_contents(store) == ["tiny.initrd", "tiny.qcow2", "tiny.vmlinuz"]


@pytest.mark.parametrize("magic", [b"070701", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18"])
def test_initrd_magics_accepted(store: ImageStore, src: Path, magic: bytes) -> None:
    initrd = src / "initrd"
    initrd.write_bytes(magic + b"\x00" * 64)
    image = store.import_image("x", make_raw(src / "d.raw"), kernel=make_kernel(src / "k"), initrd=initrd)
    assert image.initrd_file == "x.initrd"


def test_expected_checksum_that_matches(store: ImageStore, src: Path) -> None:
    disk = make_qcow2(src / "disk.qcow2")
    image = store.import_image("x", disk, expected_sha256=sha256_of(disk).upper())
    assert image.sha256 == sha256_of(disk)


def test_copy_keeps_holes(store: ImageStore, src: Path) -> None:
    disk = src / "sparse.raw"
    with disk.open("wb") as file:
        file.truncate(64 * MIB)
        file.seek(10 * MIB)
        file.write(b"data")
    if disk.stat().st_blocks * 512 >= 64 * MIB:
        pytest.skip("this filesystem does not keep holes")
    image = store.import_image("sparse", disk)
    stored = store.path_of(image.disk_file)
    assert stored.stat().st_size == 64 * MIB
    assert stored.stat().st_blocks * 512 <= 2 * MIB
    assert image.sha256 == sha256_of(disk)


def test_copy_keeps_a_trailing_hole_as_length(store: ImageStore, src: Path) -> None:
    disk = src / "tail.raw"
    disk.write_bytes(b"\x01" * 512 + bytes(3 * MIB))
    image = store.import_image("tail", disk)
    assert store.path_of(image.disk_file).read_bytes() == disk.read_bytes()


# -- what is refused, and that it leaves nothing ----------------------------------------------


@pytest.mark.parametrize("name", ["a'/><x", "$(id)", "../", "../etc", "", "-x", "x" * 65, "a b", "a.b.qcow2", "Team.x"])
def test_bad_names_are_refused(store: ImageStore, src: Path, name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.import_image(name, make_raw(src / "d.raw"))
    assert caught.value.field == "name"
    assert store_contents(store) == []


def test_missing_disk(store: ImageStore, src: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist") as caught:
        store.import_image("x", src / "nope.qcow2")
    assert caught.value.field == "disk"


def test_disk_that_is_a_directory(store: ImageStore, src: Path) -> None:
    with pytest.raises(InvalidInput, match="not a regular file") as caught:
        store.import_image("x", src)
    assert caught.value.field == "disk"


def test_disk_that_is_a_device(store: ImageStore) -> None:
    with pytest.raises(InvalidInput, match="not a regular file"):
        store.import_image("x", Path("/dev/zero"))


def test_missing_kernel_names_the_field(store: ImageStore, src: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.import_image("x", make_raw(src / "d.raw"), kernel=src / "vmlinuz")
    assert caught.value.field == "kernel"


def test_empty_disk(store: ImageStore, src: Path) -> None:
    (src / "empty.img").touch()
    with pytest.raises(ImageError, match="empty"):
        store.import_image("x", src / "empty.img")
    assert store_contents(store) == []


def test_raw_not_a_whole_number_of_sectors(store: ImageStore, src: Path) -> None:
    disk = src / "odd.raw"
    disk.write_bytes(b"\x01" * 1000)
    with pytest.raises(ImageError, match="512-byte sectors"):
        store.import_image("x", disk)
    assert store_contents(store) == []


def test_vmdk_is_refused(store: ImageStore, src: Path) -> None:
    disk = src / "d.vmdk"
    run_qemu_img("create", "-q", "-f", "vmdk", str(disk), "16M")
    with pytest.raises(ImageError, match="vmdk image; only qcow2 and raw"):
        store.import_image("x", disk)
    assert store_contents(store) == []


def test_qcow2_with_a_backing_file_is_refused(store: ImageStore, src: Path) -> None:
    base = make_qcow2(src / "base.qcow2")
    overlay = src / "overlay.qcow2"
    qemu_img.create_overlay(base, "qcow2", overlay)
    with pytest.raises(ImageError, match="backing file"):
        store.import_image("x", overlay)
    assert store_contents(store) == []


def test_qcow2_with_an_external_data_file_is_refused(store: ImageStore, src: Path) -> None:
    disk = src / "d.qcow2"
    run_qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={src / 'data.raw'}", str(disk), "16M")
    with pytest.raises(ImageError, match="another file"):
        store.import_image("x", disk)


def test_qcow2_cut_in_half_is_refused(store: ImageStore, src: Path) -> None:
    disk = make_qcow2(src / "half.qcow2", data_mib=4)
    os.truncate(disk, disk.stat().st_size // 2)
    with pytest.raises(ImageError, match="corrupt") as caught:
        store.import_image("x", disk)
    # The message names the user's file, not the store's temporary copy.
    assert str(disk) in caught.value.message and ".part" not in caught.value.message
    assert store_contents(store) == []


def test_qcow2_missing_the_end_of_its_l1_table_is_refused(store: ImageStore, src: Path) -> None:
    # An empty qcow2 ends with its L1 table; one byte short is less than a cluster, which
    # qemu-img check tolerates, so this is the store's own extent check at work.
    disk = src / "short.qcow2"
    run_qemu_img("create", "-q", "-f", "qcow2", str(disk), "64M")
    os.truncate(disk, disk.stat().st_size - 1)
    with pytest.raises(ImageError, match="truncated: its L1 table ends at byte"):
        store.import_image("x", disk)
    assert store_contents(store) == []


def test_qcow2_cut_inside_its_header_is_refused(store: ImageStore, src: Path) -> None:
    disk = make_qcow2(src / "h.qcow2")
    os.truncate(disk, 50)
    with pytest.raises(ImageError, match="header too short"):
        store.import_image("x", disk)


def test_qcow2_with_a_scribbled_version_is_refused(store: ImageStore, src: Path) -> None:
    disk = make_qcow2(src / "v.qcow2")
    scribble(disk, 4, (9).to_bytes(4, "big"))
    with pytest.raises(ImageError, match="Unsupported qcow2 version"):
        store.import_image("x", disk)
    assert store_contents(store) == []


def test_qcow2_with_a_scribbled_refcount_table_offset_is_refused(store: ImageStore, src: Path) -> None:
    disk = make_qcow2(src / "r.qcow2")
    l1_offset = int.from_bytes(disk.read_bytes()[40:48], "big")
    scribble(disk, 48, l1_offset.to_bytes(8, "big"))  # refcount table "is" the L1 table
    with pytest.raises(ImageError, match="could not be checked|corrupt"):
        store.import_image("x", disk)
    assert store_contents(store) == []


def test_qcow2_with_a_scribbled_magic_is_seen_as_raw_and_refused(store: ImageStore, src: Path) -> None:
    disk = src / "m.qcow2"
    run_qemu_img("create", "-q", "-f", "qcow2", str(disk), "64M")
    scribble(disk, 0, b"XXXX")
    assert qemu_img.inspect(disk).format == "raw"  # nothing qcow2 is left to recognise
    with pytest.raises(ImageError, match="raw disk .* not a whole number"):
        store.import_image("x", disk)


def test_checksum_mismatch_names_both_sums_and_leaves_nothing(store: ImageStore, src: Path) -> None:
    disk = make_qcow2(src / "d.qcow2")
    wrong = "0" * 64
    with pytest.raises(ImageError) as caught:
        store.import_image("x", disk, expected_sha256=wrong)
    assert wrong in caught.value.message and sha256_of(disk) in caught.value.message
    assert store_contents(store) == []


def test_malformed_expected_checksum(store: ImageStore, src: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.import_image("x", make_raw(src / "d.raw"), expected_sha256="abc")
    assert caught.value.field == "expected_sha256"


def test_kernel_that_is_not_a_bzimage(store: ImageStore, src: Path) -> None:
    kernel = src / "vmlinuz"
    kernel.write_bytes(b"\x7fELF" + bytes(4096))
    with pytest.raises(InvalidInput, match="HdrS") as caught:
        store.import_image("x", make_raw(src / "d.raw"), kernel=kernel)
    assert caught.value.field == "kernel"
    assert store_contents(store) == []


def test_empty_initrd(store: ImageStore, src: Path) -> None:
    (src / "initrd").touch()
    with pytest.raises(InvalidInput, match="empty") as caught:
        store.import_image("x", make_raw(src / "d.raw"), kernel=make_kernel(src / "k"), initrd=src / "initrd")
    assert caught.value.field == "initrd"
    assert store_contents(store) == []


def test_initrd_that_is_not_an_initramfs(store: ImageStore, src: Path) -> None:
    (src / "initrd").write_bytes(b"#!/bin/sh\necho hi\n")
    with pytest.raises(InvalidInput, match="not an initramfs"):
        store.import_image("x", make_raw(src / "d.raw"), kernel=make_kernel(src / "k"), initrd=src / "initrd")


def test_initrd_without_a_kernel(store: ImageStore, src: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.import_image("x", make_raw(src / "d.raw"), initrd=make_initrd(src / "i"))
    assert caught.value.field == "initrd"


@pytest.mark.parametrize(
    ("field", "value"), [("cmdline", "a\nb"), ("ready_marker", "READY\r\n"), ("ready_marker", " ")]
)
def test_multi_line_or_blank_boot_text_is_refused(store: ImageStore, src: Path, field: str, value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.import_image("x", make_raw(src / "d.raw"), kernel=make_kernel(src / "k"), **{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field


def test_broken_disk_after_good_kernel_and_initrd_takes_them_back(store: ImageStore, src: Path) -> None:
    disk = make_qcow2(src / "half.qcow2", data_mib=4)
    os.truncate(disk, disk.stat().st_size // 2)
    with pytest.raises(ImageError):
        store.import_image("x", disk, kernel=make_kernel(src / "k"), initrd=make_initrd(src / "i"))
    assert store_contents(store) == []


def test_interrupted_import_leaves_nothing(store: ImageStore, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(path: Path, *, fmt: str = "qcow2") -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(qemu_img, "check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.import_image("x", make_qcow2(src / "d.qcow2"), kernel=make_kernel(src / "k"))
    assert store_contents(store) == []


def test_same_name_twice_is_refused_and_the_first_kept(store: ImageStore, src: Path) -> None:
    first = store.import_image("x", make_qcow2(src / "a.qcow2", data_mib=1))
    with pytest.raises(AlreadyExists):
        store.import_image("x", make_raw(src / "b.raw"))
    assert store_contents(store) == ["x.qcow2"]
    store.verify(first)


def test_publish_never_overwrites_even_when_the_early_check_is_raced(
    store: ImageStore, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another import publishing the same name between our up-front check and our link.
    monkeypatch.setattr(ImageStore, "_refuse_taken", lambda self, name: None)
    (store.root / "x.raw").write_bytes(b"theirs")
    with pytest.raises(AlreadyExists):
        store.import_image("x", make_raw(src / "d.raw"))
    assert store_contents(store) == ["x.raw"]
    assert (store.root / "x.raw").read_bytes() == b"theirs"


# -- path_of ----------------------------------------------------------------------------------


def test_path_of_a_stored_name(store: ImageStore) -> None:
    assert store.path_of("x.qcow2") == store.root / "x.qcow2"


@pytest.mark.parametrize("file_name", ["../x", "..", ".", "", "/etc/passwd", "a/b", "sub/../x.qcow2", "x\x00y"])
def test_path_of_refuses_names_leading_elsewhere(store: ImageStore, file_name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.path_of(file_name)
    assert caught.value.field == "file_name"


def test_path_of_refuses_a_symlink_pointing_out(store: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    (store.root / "evil.qcow2").symlink_to(tmp_path / "secret")
    (store.root / "dangling.qcow2").symlink_to("/nonexistent/elsewhere")
    for name in ("evil.qcow2", "dangling.qcow2"):
        with pytest.raises(InvalidInput, match="outside the image store"):
            store.path_of(name)


def test_path_of_allows_a_symlink_within_the_store(store: ImageStore) -> None:
    (store.root / "real.qcow2").write_bytes(b"x")
    (store.root / "alias.qcow2").symlink_to("real.qcow2")
    assert store.path_of("alias.qcow2") == store.root / "alias.qcow2"


def test_delete_files_refuses_a_record_pointing_outside(store: ImageStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    image = store.import_image("x", make_raw(tmp_path / "d.raw"))
    image.disk_file = "../victim"
    with pytest.raises(InvalidInput):
        store.delete_files(image)
    assert victim.read_text() == "keep me"


# -- delete_files and verify ------------------------------------------------------------


def test_delete_files_removes_all_and_tolerates_missing(store: ImageStore, src: Path) -> None:
    image = store.import_image(
        "x", make_raw(src / "d.raw"), kernel=make_kernel(src / "k"), initrd=make_initrd(src / "i")
    )
    store.path_of("x.initrd").unlink()  # already half-deleted
    store.delete_files(image)
    assert store_contents(store) == []
    store.delete_files(image)  # a retried delete


def test_verify_accepts_an_unchanged_image(store: ImageStore, src: Path) -> None:
    store.verify(store.import_image("x", make_qcow2(src / "d.qcow2")))


def test_verify_notices_a_changed_byte(store: ImageStore, src: Path) -> None:
    image = store.import_image("x", make_raw(src / "d.raw"))
    scribble(store.path_of(image.disk_file), 4096, b"\xff")
    with pytest.raises(ImageError, match="has changed") as caught:
        store.verify(image)
    assert image.sha256 in caught.value.message
    assert caught.value.details["actual_sha256"] != image.sha256


def test_verify_notices_a_vanished_disk(store: ImageStore, src: Path) -> None:
    image = store.import_image("x", make_raw(src / "d.raw"))
    store.path_of(image.disk_file).unlink()
    with pytest.raises(ImageError, match="missing"):
        store.verify(image)


def test_verify_notices_a_vanished_kernel(store: ImageStore, src: Path) -> None:
    image = store.import_image("x", make_raw(src / "d.raw"), kernel=make_kernel(src / "k"))
    store.path_of("x.vmlinuz").unlink()
    with pytest.raises(ImageError, match="x.vmlinuz is missing"):
        store.verify(image)
