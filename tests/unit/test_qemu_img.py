"""qemu_img: a thin wrapper, tested against the real qemu-img on small files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from flexvm import programs
from flexvm.errors import AlreadyExists, ImageError, InvalidInput
from flexvm.images import qemu_img

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")

MIB = 1024 * 1024


def qemu_img_cmd(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def make_qcow2(path: Path, size: str = "64M", data_mib: int = 0) -> Path:
    """A qcow2 whose first ``data_mib`` MiB hold a non-zero pattern (so tables and clusters exist)."""
    if data_mib:
        raw = path.with_suffix(".src.raw")
        with raw.open("wb") as file:
            file.write(bytes(range(256)) * (data_mib * MIB // 256))
        qemu_img_cmd("resize", "-q", "-f", "raw", str(raw), size)
        qemu_img_cmd("convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path))
        raw.unlink()
    else:
        qemu_img_cmd("create", "-q", "-f", "qcow2", str(path), size)
    return path


def scribble(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)


def test_inspect_qcow2(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "a.qcow2", "64M")
    facts = qemu_img.inspect(disk)
    assert facts.format == "qcow2"
    assert facts.virtual_size == 64 * MIB
    assert facts.actual_size > 0
    assert facts.backing_file is None
    assert facts.data_file is None
    assert not facts.corrupt


def test_inspect_raw(tmp_path: Path) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\x01" * 8192)
    facts = qemu_img.inspect(disk)
    assert (facts.format, facts.virtual_size, facts.backing_file) == ("raw", 8192, None)


def test_inspect_with_forced_format_does_not_probe(tmp_path: Path) -> None:
    # A raw disk a guest wrote a qcow2 header into must stay raw when we say so.
    disk = make_qcow2(tmp_path / "looks-like.qcow2")
    assert qemu_img.inspect(disk, fmt="raw").format == "raw"


def test_inspect_missing_file_carries_qemu_img_message(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="No such file or directory"):
        qemu_img.inspect(tmp_path / "nope.qcow2")


def test_missing_binary_says_install_qemu_utils(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found nowhere, as on a machine without qemu-utils.
    monkeypatch.setitem(programs.PROGRAMS, "qemu-img", programs.Program("qemu-utils", "", str(tmp_path)))
    with pytest.raises(programs.ProgramMissing, match="install the Debian package.* qemu-utils"):
        qemu_img.inspect(tmp_path / "a.qcow2")


def test_protocol_looking_name_is_read_as_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given as a relative name, "null-co:disk" would open QEMU's null driver (1 GiB of nothing).
    monkeypatch.chdir(tmp_path)
    Path("null-co:disk").write_bytes(b"\x00" * 4096)
    facts = qemu_img.inspect(Path("null-co:disk"))
    assert facts.virtual_size == 4096


def test_shell_metacharacters_in_a_file_name_do_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "$(touch pwned);`touch pwned2`.raw"
    disk.write_bytes(b"\x00" * 512)
    assert qemu_img.inspect(disk).format == "raw"
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists() and not Path("pwned2").exists()


def test_check_passes_a_good_qcow2(tmp_path: Path) -> None:
    qemu_img.check(make_qcow2(tmp_path / "good.qcow2", data_mib=2))


def test_check_on_raw_has_nothing_to_check(tmp_path: Path) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\x00" * 4096)
    qemu_img.check(disk, fmt="raw")


def test_check_catches_a_qcow2_cut_in_half(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "half.qcow2", data_mib=4)
    os.truncate(disk, disk.stat().st_size // 2)
    # info still opens it: only the header and L1 table are read.
    assert qemu_img.inspect(disk).format == "qcow2"
    with pytest.raises(ImageError) as caught:
        qemu_img.check(disk)
    message = caught.value.message
    assert str(disk) in message
    assert "corrupt" in message and "exceeding the end of the file" in message
    # Thousands of per-cluster lines are summarised, not pasted.
    assert len(message) < 2000


def test_check_catches_a_scribbled_version(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "v.qcow2", data_mib=1)
    scribble(disk, 4, (9).to_bytes(4, "big"))
    with pytest.raises(ImageError, match="Unsupported qcow2 version 9") as caught:
        qemu_img.check(disk)
    assert str(disk) in caught.value.message


def test_check_catches_a_refcount_table_pointing_at_the_wrong_place(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "r.qcow2")
    scribble(disk, 48, (0x30000).to_bytes(8, "big"))  # refcount table offset -> the L1 table
    with pytest.raises(ImageError, match="could not be checked|is corrupt"):
        qemu_img.check(disk)


def test_create_overlay_records_its_backing_file(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", "64M")
    overlay = tmp_path / "vm.qcow2"
    qemu_img.create_overlay(base, "qcow2", overlay, 128 * MIB)
    facts = qemu_img.inspect(overlay)
    assert facts.format == "qcow2"
    assert facts.backing_file == str(base)
    assert facts.virtual_size == 128 * MIB


def test_create_overlay_without_size_takes_the_backing_size(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", "32M")
    overlay = tmp_path / "vm.qcow2"
    qemu_img.create_overlay(base, "qcow2", overlay)
    assert qemu_img.inspect(overlay).virtual_size == 32 * MIB


def test_create_overlay_refuses_a_smaller_disk(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", "64M")
    with pytest.raises(InvalidInput, match="smaller"):
        qemu_img.create_overlay(base, "qcow2", tmp_path / "vm.qcow2", MIB)
    assert not (tmp_path / "vm.qcow2").exists()


def test_create_overlay_never_overwrites(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2")
    existing = tmp_path / "vm.qcow2"
    existing.write_bytes(b"precious")
    with pytest.raises(AlreadyExists):
        qemu_img.create_overlay(base, "qcow2", existing, 64 * MIB)
    assert existing.read_bytes() == b"precious"


def test_create_overlay_on_a_missing_backing_file_fails_with_qemu_img_message(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="No such file"):
        qemu_img.create_overlay(tmp_path / "gone.qcow2", "qcow2", tmp_path / "vm.qcow2")


def test_convert_raw_to_qcow2_keeps_the_content(tmp_path: Path) -> None:
    src = tmp_path / "a.raw"
    src.write_bytes(os.urandom(3 * MIB))
    dst = tmp_path / "a.qcow2"
    qemu_img.convert(src, dst, "qcow2", src_fmt="raw")
    assert qemu_img.inspect(dst).format == "qcow2"
    same = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(src), str(dst)], check=False)
    assert same.returncode == 0


def test_convert_refuses_unknown_formats(tmp_path: Path) -> None:
    src = tmp_path / "a.raw"
    src.write_bytes(b"\x00" * 512)
    with pytest.raises(InvalidInput, match="vvfat"):
        qemu_img.convert(src, tmp_path / "b", "vvfat")


def test_resize_grows(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "a.qcow2", "64M")
    qemu_img.resize(disk, 256 * MIB)
    assert qemu_img.inspect(disk).virtual_size == 256 * MIB


def test_resize_refuses_to_shrink(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "a.qcow2", "64M")
    with pytest.raises(InvalidInput, match="only grow"):
        qemu_img.resize(disk, 32 * MIB)
    assert qemu_img.inspect(disk).virtual_size == 64 * MIB


def test_resize_failure_carries_stderr(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "a.qcow2", "64M")
    with pytest.raises(ImageError, match=r"resizing .* failed: .*L1 table"):
        qemu_img.resize(disk, 1 << 62)  # more than a qcow2's L1 table can map
