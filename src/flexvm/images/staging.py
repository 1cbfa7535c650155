"""Files on their way into the image store: staged under hidden names, locked while their owner
lives, and taken back by whoever finds them abandoned.

Every file an import or an upload writes starts as a hidden temporary in the store's root (the
filesystem of its final name, so publishing it is a hard link, never a copy)::

    .NAME.XXXXXXXX.part     an import's copy of a file; its name goes once the file is published
    .NAME.XXXXXXXX.upload   an uploaded disk; its name stays until the image is recorded, so that
                            until then it also stands for the published file (the same inode)

While its owner lives, a staging file carries a lock on its first byte, taken on the open file
description (``F_OFD_SETLK``), which the kernel (or the NFS server, once the client's lease
lapses) drops when the process ends, however it ends. A staging file that can be locked is
therefore abandoned, and ``sweep`` removes it; for an abandoned upload, also the published file
that is its inode, unless an image record names that file (the server died after recording the
image, before dropping the staging name). So a server that dies part way through an upload leaves
no record without its file and, once a restart or the next upload has swept, no file without its
record. The files an interrupted *import* published are its operation's to take back (it holds the
name and resumes); the sweep only drops the import's temporaries.

Why this lock: ``flock`` is emulated on NFS as a whole-file byte-range lock, which collides with
qemu-img's own image locking (one byte per permission from byte 100 on, QEMU's ``RAW_LOCK_*_BASE``);
POSIX locks (``lockf``) vanish when any descriptor of the file in the process is closed, and never
exclude the process itself. An OFD lock on byte 0 has none of these problems.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from flexvm.errors import ImageError

CHUNK = 1024 * 1024
_ZERO_CHUNK = bytes(CHUNK)

PART = ".part"
UPLOAD = ".upload"

# struct flock (Linux, x86-64 and arm64): l_type, l_whence, l_start, l_len, l_pid, padding.
_FLOCK = struct.Struct("@hhqqi4x")
_OWNER_BYTE = 0
# Filesystems without locks (some FUSE ones): nothing is locked there, and nothing swept.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP})
_STAGE_ATTEMPTS = 3


def _lock(fd: int, *, wait: bool) -> bool:
    """Take the owner's lock of ``fd``'s file: True if taken (or locks are unsupported and
    ``wait`` is set: the owner goes on unlocked), False if another open file holds it."""
    request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _OWNER_BYTE, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, request)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if err.errno in _NO_LOCKS:
            return wait
        raise
    return True


def _is(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


@dataclass
class _Held:
    path: Path
    fd: int  # holds the owner's lock until the name is gone


@dataclass
class Staging:
    """The files one import or upload has made so far, so a failure can take them all back."""

    root: Path
    temporary: list[_Held] = field(default_factory=list)
    published: list[Path] = field(default_factory=list)

    def stage(self, name: str, suffix: str = PART) -> Path:
        """Reserve a hidden file in the root, locked as this process's."""
        for _ in range(_STAGE_ATTEMPTS):
            fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=f".{name}.", suffix=suffix)
            tmp = Path(tmp_name)
            # Between mkstemp and the lock a sweep may take the file for abandoned and remove it:
            # then the name is gone (or another file's), and a new one is made.
            if _lock(fd, wait=True) and _is(fd, tmp):
                os.fchmod(fd, 0o644)  # mkstemp makes 0600; QEMU may run as another user and must read it
                self.temporary.append(_Held(tmp, fd))
                return tmp
            os.close(fd)
        raise ImageError(f"could not stage a file for '{name}' in the image store {self.root}")

    def discard(self) -> None:
        """Take back everything: what was published first, while the staging names still hold it."""
        for path in self.published:
            path.unlink(missing_ok=True)
        self.release()

    def leave(self) -> None:
        """Keep every file, names and all, and let go of the locks: as if this process had died."""
        for held in self.temporary:
            os.close(held.fd)
        self.temporary.clear()

    def release(self) -> None:
        """Drop the staging names (published links keep the data); the locks go with them."""
        for held in self.temporary:
            held.path.unlink(missing_ok=True)
            os.close(held.fd)
        self.temporary.clear()


def _staged_name(file_name: str) -> str | None:
    """The image name a staging file was made for (``.NAME.XXXXXXXX.upload``), or None."""
    if not file_name.startswith(".") or not file_name.endswith((PART, UPLOAD)):
        return None
    stem = file_name[1:].rsplit(".", 1)[0]  # mkstemp's random part has no dots; a project's key does
    name, dot, _random = stem.rpartition(".")
    return name if dot else None


def receiving(root: Path, name: str, besides: Path | None = None) -> bool:
    """Whether a live upload (not ``besides``) is staging ``name``."""
    for entry in os.scandir(root):
        if not entry.name.endswith(UPLOAD) or _staged_name(entry.name) != name or Path(entry.path) == besides:
            continue
        if _owner_lives(entry.path):
            return True
    return False


def held_by_upload(path: Path) -> bool:
    """Whether ``path`` is the same file as a live upload's staging file (published, not yet recorded)."""
    try:
        target = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    for entry in os.scandir(path.parent):
        if not entry.name.endswith(UPLOAD):
            continue
        try:
            staged = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if (staged.st_dev, staged.st_ino) == (target.st_dev, target.st_ino) and _owner_lives(entry.path):
            return True
    return False


def _owner_lives(path: str) -> bool:
    """Whether a live process holds the lock of the staging file at ``path`` (a gone file: no)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        return not _lock(fd, wait=False)
    finally:
        os.close(fd)


def sweep(root: Path, disk_suffixes: Sequence[str], recorded: Callable[[str], bool]) -> list[str]:
    """Remove what dead imports and uploads left in ``root``; return the names removed.

    For an upload, ``NAME.<suffix>`` goes too when it is the staging file's inode and
    ``recorded(file_name)`` says no image record names it.
    """
    removed = []
    for entry in os.scandir(root):
        name = _staged_name(entry.name)
        if name is None or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue  # its owner finished meanwhile
        try:
            # Held while deciding: its owner is gone, and no one else takes it meanwhile.
            if not _lock(fd, wait=False) or not _is(fd, path):
                continue
            if entry.name.endswith(UPLOAD):
                for suffix in disk_suffixes:
                    published = root / f"{name}.{suffix}"
                    if _is(fd, published) and not recorded(published.name):
                        published.unlink()
                        removed.append(published.name)
            path.unlink(missing_ok=True)
            removed.append(entry.name)
        finally:
            os.close(fd)
    return removed


class SparseWriter:
    """Writes a byte stream into a staged file in CHUNK blocks, seeking over blocks of zeros so
    they stay holes (disk images are mostly zeros), and hashes every byte on the way."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.size = 0
        self._digest = hashlib.sha256()
        self._pending = bytearray()
        file.truncate(0)

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self.size += len(data)
        if not self._pending and len(data) == CHUNK:
            self._put(data)  # reads of whole chunks (a file's copy) skip the buffer
            return
        self._pending += data
        while len(self._pending) >= CHUNK:
            self._put(bytes(self._pending[:CHUNK]))
            del self._pending[:CHUNK]

    def finish(self) -> str:
        """Write what is left, make the length and the data durable; the sha256 of it all."""
        if self._pending:
            self._put(bytes(self._pending))
            self._pending.clear()
        # A trailing hole needs the length set explicitly; seeking alone does not.
        self.file.truncate(self.file.tell())
        self.file.flush()
        os.fsync(self.file.fileno())
        return self._digest.hexdigest()

    def _put(self, block: bytes) -> None:
        if block == _ZERO_CHUNK[: len(block)]:
            self.file.seek(len(block), os.SEEK_CUR)
        else:
            self.file.write(block)
