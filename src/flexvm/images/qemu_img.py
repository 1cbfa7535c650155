"""A thin, typed wrapper over the ``qemu-img`` command.

Every call is a list of arguments, never a shell line, so no file name can run anything.
Every path is handed over absolute: qemu-img reads ``nbd:...``, ``json:{...}`` or
``file:...`` at the start of a relative name as a protocol, and an absolute path cannot
start that way. Failures become ``ImageError`` carrying qemu-img's own complaint.

What qemu-img does and does not catch (QEMU 7.2, checked by hand):

- ``info`` only reads the header and the L1 table. A qcow2 cut in half still "opens";
  only ``check`` notices, by finding references past the end of the file.
- ``check`` tolerates a file that ends less than one cluster early (reads past the end
  return zeros), so a qcow2 missing the tail of its L1 table passes. The image store adds
  its own header/table extent check for that.
- A qcow2 whose magic was overwritten is probed as *raw*: nothing in qemu-img can tell it
  from a raw disk that happens to start with junk.
- ``check`` exits 1 when it cannot finish (unreadable header, refcount table outside the
  file), 2 for corruptions, 3 for leaked clusters only, 63 for formats without checks.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexvm import programs
from flexvm.errors import AlreadyExists, ImageError, InvalidInput

# Formats qemu-img may be told to treat a file as. Anything else is refused before
# qemu-img sees it, so a caller cannot smuggle in e.g. "vvfat" or a protocol driver.
KNOWN_FORMATS = frozenset({"qcow2", "raw"})

# qemu-img check on a badly broken image prints one line per bad cluster, which for a
# large image is thousands of lines; an error message keeps the first few.
_MAX_COMPLAINT_LINES = 5

# Metadata reads are quick; a stuck one means a hung filesystem, not a big image.
_INFO_TIMEOUT_S = 60.0

_CHECK_OK = 0
_CHECK_INCOMPLETE = 1
_CHECK_CORRUPT = 2
_CHECK_LEAKS_ONLY = 3
_CHECK_UNSUPPORTED = 63


@dataclass(frozen=True)
class DiskFacts:
    """What ``qemu-img info`` says about one disk file."""

    format: str
    virtual_size: int  # bytes the guest sees
    actual_size: int  # bytes allocated on the host filesystem
    backing_file: str | None  # set for overlays; None for a self-contained image
    # A qcow2 may keep its data in another, named file (an "external data file"): the
    # image then reads whatever that file is, so the store refuses such images.
    data_file: str | None = None
    encrypted: bool = False
    corrupt: bool = False  # qcow2's own "corrupt" header bit, set by QEMU on detected damage


def inspect(path: Path, *, fmt: str | None = None) -> DiskFacts:
    """Read a disk's format, sizes and backing file.

    Without ``fmt`` the format is probed from the content: right for a file a user hands
    in, wrong for a disk a guest has written to (a guest can write a qcow2 header into a
    raw disk), so pass ``fmt`` for those. ``-U`` (force-share) lets this read an overlay
    a running VM holds the write lock on; info only reads metadata, so that is safe.
    """
    args = ["info", "--output=json", "-U"]
    if fmt is not None:
        args += ["-f", _known_format(fmt)]
    result = _qemu_img([*args, _arg(path)], action=f"inspecting {path}", timeout=_INFO_TIMEOUT_S)
    info = _parse_json(result.stdout, f"inspecting {path}")
    specific = info.get("format-specific", {}).get("data", {})
    try:
        return DiskFacts(
            format=str(info["format"]),
            virtual_size=int(info["virtual-size"]),
            actual_size=int(info.get("actual-size", 0)),
            backing_file=info.get("backing-filename"),
            data_file=specific.get("data-file"),
            encrypted=bool(info.get("encrypted", False)),
            corrupt=bool(specific.get("corrupt", False)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ImageError(f"qemu-img info gave unexpected output for {path}: {err!r}") from err


def check(path: Path, *, fmt: str = "qcow2") -> None:
    """Run ``qemu-img check`` and raise ``ImageError`` if the image is damaged.

    Leaked clusters alone (exit 3) are wasted space, not damage, so they pass. Formats
    qemu-img cannot check (raw) pass too: there is no metadata to be wrong. No ``-U``
    here: checking a file something is writing to gives meaningless answers, so a locked
    file is reported as an error instead.
    """
    args = ["check", "--output=json", "-f", _known_format(fmt), _arg(path)]
    result = _qemu_img(args, action=f"checking {path}", accept=frozenset(range(256)), timeout=None)
    code = result.returncode
    if code in (_CHECK_OK, _CHECK_LEAKS_ONLY, _CHECK_UNSUPPORTED):
        return
    counts = ""
    if result.stdout.strip():
        report = _parse_json(result.stdout, f"checking {path}")
        counts = f" ({report.get('corruptions', 0)} corruptions, {report.get('check-errors', 0)} check errors)"
    what = "is corrupt" if code == _CHECK_CORRUPT else "could not be checked"
    raise ImageError(
        f"{path} {what}{counts}: qemu-img check says: {_summarise(result.stderr)}",
        details={"file": str(path), "qemu_img_exit": code},
    )


def convert(src: Path, dst: Path, fmt: str, *, src_fmt: str | None = None) -> None:
    """Copy ``src`` into a new file ``dst`` in format ``fmt`` (holes stay holes)."""
    _refuse_existing(dst)
    args = ["convert", "-O", _known_format(fmt)]
    if src_fmt is not None:
        args += ["-f", _known_format(src_fmt)]
    _qemu_img([*args, _arg(src), _arg(dst)], action=f"converting {src} to {fmt}", timeout=None)


def create_overlay(backing: Path, backing_format: str, dst: Path, size_bytes: int | None = None) -> None:
    """Create a qcow2 overlay ``dst`` whose unwritten clusters read from ``backing``.

    The backing path is recorded absolute, so the overlay works from any directory.
    A size below the backing image's is refused: qemu-img allows it and the guest would
    silently lose the tail of its disk.
    """
    _refuse_existing(dst)
    backing_format = _known_format(backing_format)
    if size_bytes is not None:
        base = inspect(backing, fmt=backing_format)
        if size_bytes < base.virtual_size:
            raise InvalidInput(
                "size",
                f"{size_bytes} bytes is smaller than the image's {base.virtual_size} bytes",
            )
    args = ["create", "-q", "-f", "qcow2", "-F", backing_format, "-b", _arg(backing), _arg(dst)]
    if size_bytes is not None:
        args.append(str(size_bytes))
    _qemu_img(args, action=f"creating overlay {dst}", timeout=_INFO_TIMEOUT_S)


def resize(path: Path, size_bytes: int, *, fmt: str = "qcow2") -> None:
    """Grow a disk that no running VM holds (a running VM's disk grows through libvirt).

    Shrinking is refused here with a plain message; qemu-img would otherwise answer with
    advice about a ``--shrink`` flag that destroys data.
    """
    fmt = _known_format(fmt)
    current = inspect(path, fmt=fmt).virtual_size
    if size_bytes < current:
        raise InvalidInput("size", f"disks can only grow: {size_bytes} bytes < current {current} bytes")
    if size_bytes == current:
        return
    _qemu_img(["resize", "-q", "-f", fmt, _arg(path), str(size_bytes)], action=f"resizing {path}", timeout=None)


def _qemu_img(
    args: list[str],
    *,
    action: str,
    timeout: float | None,
    accept: frozenset[int] = frozenset({0}),
) -> subprocess.CompletedProcess[str]:
    qemu_img = programs.find("qemu-img")  # ProgramMissing names qemu-utils
    try:
        result = subprocess.run(
            [qemu_img, *args],
            capture_output=True,
            text=True,
            errors="replace",  # file names in messages need not be UTF-8
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise ImageError(f"{action}: qemu-img did not answer within {timeout:g} s") from err
    except OSError as err:
        raise ImageError(f"{action}: could not run qemu-img: {err.strerror}") from err
    if result.returncode not in accept:
        raise ImageError(
            f"{action} failed: {_summarise(result.stderr)}",
            details={"qemu_img_exit": result.returncode},
        )
    return result


def _arg(path: Path) -> str:
    # Absolute, so qemu-img never parses a prefix of the name as a protocol.
    return os.path.abspath(os.fspath(path))


def _known_format(fmt: str) -> str:
    if fmt not in KNOWN_FORMATS:
        raise InvalidInput("format", f"{fmt!r} is not supported; use one of {sorted(KNOWN_FORMATS)}")
    return fmt


def _refuse_existing(dst: Path) -> None:
    # qemu-img create/convert truncate an existing file without asking.
    if os.path.lexists(dst):
        raise AlreadyExists("disk file", str(dst))


def _parse_json(text: str, action: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ImageError(f"{action}: qemu-img printed something that is not JSON") from err
    if not isinstance(value, dict):
        raise ImageError(f"{action}: qemu-img printed {type(value).__name__}, expected an object")
    return value


def _summarise(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "no message"
    shown = "; ".join(lines[:_MAX_COMPLAINT_LINES])
    if len(lines) > _MAX_COMPLAINT_LINES:
        shown += f"; ... and {len(lines) - _MAX_COMPLAINT_LINES} more lines"
    return shown
