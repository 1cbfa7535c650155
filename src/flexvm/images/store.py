"""The image store: a flat directory of image files that flexvm owns.

It keeps the FILES only (disk, and optionally kernel and initrd for direct boot);
recording images in the database is the ``store/`` layer's job. Files arrive through
``import_image``, which validates and copies them in under names derived from the image
name; nothing outside the root is ever handed out (``path_of``).

An import stages every file under a hidden temporary name in the root itself (same
filesystem, so publishing is a link, not a copy) and validates the *copy*: what is
checked and hashed is exactly what is stored, even if the source changes meanwhile.
A failed import removes everything it staged or published.

An upload (``receive``) is the same pipeline fed by a stream instead of a file: the bytes are
staged, hashed and capped as they arrive, then pass the import's own checks (``_checked_disk``)
and are published the same way. What a dead server left staged is found by ``sweep``
(``staging.py`` says how a live owner is told from a dead one).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from flexvm.errors import AlreadyExists, ImageError, InvalidInput, TooLarge
from flexvm.images import qemu_img, staging
from flexvm.images.staging import CHUNK, UPLOAD, SparseWriter, Staging
from flexvm.model.image import Image
from flexvm.model.projects import check_key

SECTOR = 512
SUPPORTED_FORMATS = ("qcow2", "raw")

# Linux x86 boot protocol: the setup header carries "HdrS" at offset 0x202.
_BZIMAGE_MAGIC_OFFSET = 0x202
_BZIMAGE_MAGIC = b"HdrS"
# What an initramfs may start with: a compressed stream the kernel can unpack, or a bare
# cpio archive (newc, newc+crc, odc) as initramfs-tools writes for early microcode.
_INITRD_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x02\x21\x4c\x18": "lz4 (legacy)",
    b"\x04\x22\x4d\x18": "lz4",
    b"070701": "cpio",
    b"070702": "cpio",
    b"070707": "cpio",
}

# qcow2 header, big-endian: magic, version, backing offset/size, cluster_bits, size,
# crypt, l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters.
_QCOW2_HEADER = struct.Struct(">4sIQIIQIIQQI")
_QCOW2_V2_HEADER_LENGTH = 72
_QCOW2_V3_HEADER_LENGTH_AT = 100

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_CMDLINE = 2048  # x86's COMMAND_LINE_SIZE
_MAX_READY_MARKER = 200
_MAX_DESCRIPTION = 1024


class ImageStore:
    def __init__(self, root: Path) -> None:
        root = Path(root)
        if not root.exists():
            root.mkdir(parents=True)
            # mkdir's mode is filtered by the umask; libvirt's qemu user must be able to read.
            root.chmod(0o755)
        if not root.is_dir():
            raise ImageError(f"image store root {root} is not a directory")
        self.root = root.resolve()

    # -- reading -----------------------------------------------------------------------

    def path_of(self, file_name: str) -> Path:
        """The path of a stored file; refuses any name that would lead outside the root.

        Only bare file names are accepted (the store is flat), and the name must still
        resolve inside the root after following symlinks. The returned path is the
        unresolved one, so deleting it removes a link rather than what it points at.
        """
        if (
            not isinstance(file_name, str)
            or file_name in ("", ".", "..")
            or "\x00" in file_name
            or os.sep in file_name
            or (os.altsep is not None and os.altsep in file_name)
        ):
            raise InvalidInput("file_name", f"{file_name!r} is not a plain file name inside the image store")
        path = self.root / file_name
        if path.resolve().parent != self.root:
            raise InvalidInput("file_name", f"{file_name!r} resolves to a path outside the image store")
        return path

    def verify(self, image: Image) -> None:
        """Recompute the disk's sha256; raise ``ImageError`` if it changed or any file vanished."""
        for file_name in image.files:
            if not self.path_of(file_name).is_file():
                raise ImageError(f"image '{image.name}': file {file_name} is missing from the image store")
        disk = self.path_of(image.disk_file)
        try:
            actual = _sha256_of(disk)
        except OSError as err:
            raise ImageError(f"image '{image.name}': cannot read {image.disk_file}: {err.strerror}") from err
        if actual != image.sha256:
            raise ImageError(
                f"image '{image.name}': {image.disk_file} has changed: sha256 is {actual}, recorded {image.sha256}",
                details={"expected_sha256": image.sha256, "actual_sha256": actual},
            )

    # -- changing ------------------------------------------------------------------------

    def delete_files(self, image: Image) -> None:
        """Remove an image's files; ones already gone are fine (a retried delete)."""
        for file_name in image.files:
            self.path_of(file_name).unlink(missing_ok=True)

    def import_image(
        self,
        name: str,
        disk: Path,
        *,
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str | None = None,
        ready_marker: str | None = None,
        cloud_init: bool = False,
        description: str = "",
        expected_sha256: str | None = None,
    ) -> Image:
        """Validate and copy an image's files into the store; return the ``Image`` to record."""
        check_key("name", name)
        disk = _source_file("disk", disk)
        kernel = _source_file("kernel", kernel) if kernel is not None else None
        initrd = _source_file("initrd", initrd) if initrd is not None else None
        _check_boot_options(kernel, initrd, cmdline, ready_marker, description)
        expected = normalise_sha256("expected_sha256", expected_sha256)
        # Fail fast on the source, before copying what may be gigabytes of a wrong format.
        disk_format = _acceptable_disk(disk).format

        self._refuse_taken(name)

        staged = Staging(self.root)
        try:
            kernel_file, initrd_file = self._import_boot_files(staged, name, kernel, initrd)
            disk_tmp = staged.stage(name)
            sha256 = _copy_hashing(disk, disk_tmp)
            if expected is not None and sha256 != expected:
                raise ImageError(
                    f"{disk}: sha256 is {sha256}, expected {expected}",
                    details={"expected_sha256": expected, "actual_sha256": sha256},
                )
            # The authoritative checks run on the copy: that is what VMs will use.
            facts = _checked_disk(disk_tmp, shown_as=disk)
            if facts.format != disk_format:
                raise ImageError(f"{disk} changed format while it was being imported")
            disk_file = self._publish_disk(staged, name, disk_tmp, facts)
        except BaseException:
            # Not swallowed: undo, then let the original error (or Ctrl-C) carry on.
            staged.discard()
            raise
        staged.release()  # the published links keep the data; the temporary names go
        return self._image(
            name,
            facts,
            disk_file,
            sha256,
            kernel_file=kernel_file,
            initrd_file=initrd_file,
            cmdline=cmdline,
            ready_marker=ready_marker,
            cloud_init=cloud_init,
            description=description,
        )

    def receive(self, key: str, *, limit: int, cloud_init: bool = False, description: str = "") -> Upload:
        """An upload of a disk for the image ``key`` (a name, or ``project.name`` for a project's
        private image), to be written as a stream of bytes: see ``Upload``."""
        check_key("name", key)
        _check_boot_options(None, None, None, None, description)
        self._refuse_taken(key)
        return Upload(self, key, limit=limit, cloud_init=cloud_init, description=description)

    def receiving(self, name: str, besides: Upload | None = None) -> bool:
        """Whether an upload (other than ``besides``) is under way for ``name``, on any server."""
        return staging.receiving(self.root, name, besides.path if besides is not None else None)

    def sweep(self, recorded: Callable[[str], bool]) -> list[str]:
        """Remove what dead imports and uploads left staged, and a file an upload published that
        was never recorded (``recorded(file_name)``: whether an image record names it)."""
        return staging.sweep(self.root, SUPPORTED_FORMATS, recorded)

    def discard_name(self, name: str) -> None:
        """Remove whatever files an interrupted import of ``name`` published (its record was
        never written, and the operation importing it holds the name)."""
        for suffix in (*SUPPORTED_FORMATS, "vmlinuz", "initrd"):
            path = self.root / f"{name}.{suffix}"
            # What a live upload published (to record next) is not this import's to take back:
            # capture and VM import check the records for a name, not the uploads under way.
            if not staging.held_by_upload(path):
                path.unlink(missing_ok=True)

    def _refuse_taken(self, name: str) -> None:
        # Checked up front so a clash costs nothing; _publish re-checks atomically.
        for suffix in (*SUPPORTED_FORMATS, "vmlinuz", "initrd"):
            if os.path.lexists(self.root / f"{name}.{suffix}"):
                raise AlreadyExists("image", name)

    def _import_boot_files(
        self, staged: Staging, name: str, kernel: Path | None, initrd: Path | None
    ) -> tuple[str | None, str | None]:
        kernel_file = initrd_file = None
        if kernel is not None:
            tmp = staged.stage(name)
            _copy_hashing(kernel, tmp)
            _check_bzimage(tmp, shown_as=kernel)
            kernel_file = self._publish(staged, tmp, f"{name}.vmlinuz")
        if initrd is not None:
            tmp = staged.stage(name)
            _copy_hashing(initrd, tmp)
            _check_initrd(tmp, shown_as=initrd)
            initrd_file = self._publish(staged, tmp, f"{name}.initrd")
        return kernel_file, initrd_file

    def _publish_disk(self, staged: Staging, name: str, tmp: Path, facts: qemu_img.DiskFacts) -> str:
        disk_file = self._publish(staged, tmp, f"{name}.{facts.format}")
        _fsync_dir(self.root)
        return disk_file

    def _publish(self, staged: Staging, tmp: Path, file_name: str) -> str:
        final = self.path_of(file_name)
        try:
            # link() refuses to replace an existing file, unlike rename(): two imports of
            # the same name cannot overwrite each other's files.
            os.link(tmp, final)
        except FileExistsError as err:
            raise AlreadyExists("image file", file_name) from err
        except OSError as err:
            raise ImageError(f"cannot publish {file_name} in the image store: {err.strerror}") from err
        staged.published.append(final)
        return file_name

    def _image(
        self,
        name: str,
        facts: qemu_img.DiskFacts,
        disk_file: str,
        sha256: str,
        *,
        kernel_file: str | None = None,
        initrd_file: str | None = None,
        cmdline: str | None = None,
        ready_marker: str | None = None,
        cloud_init: bool = False,
        description: str = "",
    ) -> Image:
        return Image(
            name=name,
            format=facts.format,
            disk_file=disk_file,
            virtual_size=facts.virtual_size,
            file_size=self.path_of(disk_file).stat().st_size,
            sha256=sha256,
            created_at=datetime.now(UTC),
            kernel_file=kernel_file,
            initrd_file=initrd_file,
            cmdline=cmdline,
            ready_marker=ready_marker,
            cloud_init=cloud_init,
            description=description,
        )


class Upload:
    """A disk arriving as a stream of bytes (the API's upload), staged in the store as it comes.

    Used as a context manager: ``write`` the bytes (past ``limit`` it raises ``TooLarge``),
    ``check`` them as an import checks its copy, ``publish``, record the image, and say so with
    ``recorded()``. Leaving the block any other way takes back everything it staged and published.
    Until then the staging file keeps its name, locked: a server that dies inside the block
    leaves it for ``ImageStore.sweep``, which takes back the published file too unless the image
    was recorded.
    """

    SHOWN_AS = "the uploaded disk"

    def __init__(self, store: ImageStore, name: str, *, limit: int, cloud_init: bool, description: str) -> None:
        self.store = store
        self.name = name
        self.limit = limit
        self.cloud_init = cloud_init
        self.description = description
        self.path = Path()
        self._staged = Staging(store.root)
        self._writer: SparseWriter | None = None
        self._sha256: str | None = None
        self._facts: qemu_img.DiskFacts | None = None
        self._recorded = False
        self._undecided = False

    def __enter__(self) -> Upload:
        self.path = self._staged.stage(self.name, UPLOAD)
        try:
            self._writer = SparseWriter(self.path.open("r+b"))
        except BaseException:
            self._staged.discard()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._writer is not None:
            self._writer.file.close()
        if self._undecided:
            self._staged.leave()
        elif self._recorded and kind is None:
            self._staged.release()
        else:
            self._staged.discard()

    @property
    def received(self) -> int:
        return self._writer.size if self._writer is not None else 0

    def write(self, data: bytes) -> None:
        writer = self._active()
        if writer.size + len(data) > self.limit:
            raise TooLarge("body", None, self.limit)
        try:
            writer.write(data)
        except OSError as err:
            raise ImageError(f"writing the upload into the image store failed: {err.strerror or err}") from err

    def finish(self) -> str:
        """The end of the bytes: made durable; their sha256."""
        if self._sha256 is None:
            try:
                self._sha256 = self._active().finish()
            except OSError as err:
                raise ImageError(f"writing the upload into the image store failed: {err.strerror or err}") from err
        return self._sha256

    def check(self) -> qemu_img.DiskFacts:
        """The checks an imported disk passes (``ImageError`` says what is wrong with it)."""
        self.finish()
        self._facts = _checked_disk(self.path, shown_as=self.SHOWN_AS)
        return self._facts

    def publish(self) -> Image:
        """Link the checked disk under its final name; the ``Image`` to record."""
        if self._facts is None:
            raise RuntimeError("an upload is checked before it is published")
        disk_file = self.store._publish_disk(self._staged, self.name, self.path, self._facts)
        return self.store._image(
            self.name,
            self._facts,
            disk_file,
            self.finish(),
            cloud_init=self.cloud_init,
            description=self.description,
        )

    def recorded(self) -> None:
        """The image is recorded: leaving the block now keeps it."""
        self._recorded = True

    def undecided(self) -> None:
        """Whether the image was recorded is unknown (the database went away): leaving the block
        now leaves everything as a dead server would, for ``sweep`` to decide by the records."""
        self._undecided = True

    def _active(self) -> SparseWriter:
        if self._writer is None:
            raise RuntimeError("an upload is written inside its with-block")
        return self._writer


# -- checking what comes in -------------------------------------------------------------


def _source_file(field_name: str, path: Path | str) -> Path:
    path = Path(path)
    try:
        status = path.stat()  # follows symlinks: a link to a regular file is fine
    except FileNotFoundError as err:
        raise InvalidInput(field_name, f"{path} does not exist") from err
    except OSError as err:
        raise InvalidInput(field_name, f"{path} cannot be examined: {err.strerror}") from err
    # Devices, FIFOs and directories are refused: reading /dev/zero would never end.
    if not stat.S_ISREG(status.st_mode):
        raise InvalidInput(field_name, f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise InvalidInput(field_name, f"{path} is not readable")
    return path


def _check_boot_options(
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str | None,
    ready_marker: str | None,
    description: str,
) -> None:
    if initrd is not None and kernel is None:
        raise InvalidInput("initrd", "an initrd is only used with a kernel; give kernel too")
    if cmdline is not None:
        if kernel is None:
            raise InvalidInput("cmdline", "a kernel command line is only used with a kernel; give kernel too")
        _check_one_line("cmdline", cmdline, _MAX_CMDLINE)
    if ready_marker is not None:
        _check_one_line("ready_marker", ready_marker, _MAX_READY_MARKER)
        if not ready_marker.strip():
            raise InvalidInput("ready_marker", "must not be blank")
    if not isinstance(description, str) or len(description) > _MAX_DESCRIPTION:
        raise InvalidInput("description", f"must be text of at most {_MAX_DESCRIPTION} characters")


def _check_one_line(field_name: str, text: str, limit: int) -> None:
    # Both end up on a serial console or a kernel command line, where a newline or a
    # control character changes meaning.
    if not isinstance(text, str) or len(text) > limit:
        raise InvalidInput(field_name, f"must be text of at most {limit} characters")
    if not text.isprintable():
        raise InvalidInput(field_name, "must be one line of printable characters")


def normalise_sha256(field: str, value: str | None) -> str | None:
    """A sha256 as given (64 hexadecimal digits, either case), lowercased; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value):
        raise InvalidInput(field, "must be 64 hexadecimal digits")
    return value.lower()


def _checked_disk(path: Path, *, shown_as: Path | str) -> qemu_img.DiskFacts:
    """The checks every disk that comes in passes, on the staged file VMs will use: an import's
    copy and an upload alike."""
    try:
        facts = _acceptable_disk(path, shown_as=shown_as)
        _check_disk_layout(path, facts, shown_as=shown_as)
    except ImageError as err:
        if str(path) not in err.message:
            raise
        # qemu-img's complaints name the staged file; name the one the user gave.
        message = err.message.replace(str(path), str(shown_as))
        raise ImageError(message, details={**err.details, "file": str(shown_as)}) from err
    return facts


def _acceptable_disk(path: Path, *, shown_as: Path | str | None = None) -> qemu_img.DiskFacts:
    """Refuse what a VM cannot safely boot from: empty files, foreign formats, chains."""
    shown = shown_as or path
    if path.stat().st_size == 0:
        raise ImageError(f"{shown} is empty")
    facts = qemu_img.inspect(path)
    if facts.format not in SUPPORTED_FORMATS:
        raise ImageError(
            f"{shown} is a {facts.format} image; only qcow2 and raw are supported "
            "(convert it with: qemu-img convert -O qcow2 <file> <new file>)"
        )
    if facts.backing_file:
        raise ImageError(
            f"{shown} is a qcow2 overlay on backing file {facts.backing_file}; images must be "
            "self-contained (flatten it with: qemu-img convert -O qcow2 <file> <new file>)"
        )
    # An external data file or encryption means the bytes VMs would see are not in this file.
    if facts.data_file:
        raise ImageError(f"{shown} keeps its data in another file ({facts.data_file}); images must be self-contained")
    if facts.encrypted:
        raise ImageError(f"{shown} is encrypted; import an unencrypted image")
    if facts.corrupt:
        raise ImageError(f"{shown} is marked corrupt in its qcow2 header")
    return facts


def _check_disk_layout(path: Path, facts: qemu_img.DiskFacts, *, shown_as: Path | str) -> None:
    size = path.stat().st_size
    if facts.format == "raw":
        if size % SECTOR:
            raise ImageError(
                f"{shown_as} is a raw disk of {size} bytes, not a whole number of {SECTOR}-byte "
                "sectors: it is probably truncated or not a disk image"
            )
        return
    _check_qcow2_tables_fit(path, size, shown_as)
    qemu_img.check(path, fmt="qcow2")


def _check_qcow2_tables_fit(path: Path, size: int, shown_as: Path | str) -> None:
    """Refuse a qcow2 shorter than its header, L1 table or refcount table.

    qemu-img check only notices a file that ends at least a cluster early, so a file
    missing the last bytes of its tables would pass it.
    """
    with path.open("rb") as file:
        header = file.read(_QCOW2_V3_HEADER_LENGTH_AT + 4)
    if len(header) < _QCOW2_HEADER.size:
        raise ImageError(f"{shown_as} is truncated: {len(header)} bytes, shorter than a qcow2 header")
    (
        _magic,
        version,
        _bf_off,
        _bf_size,
        cluster_bits,
        _vsize,
        _crypt,
        l1_size,
        l1_offset,
        refcount_offset,
        refcount_clusters,
    ) = _QCOW2_HEADER.unpack_from(header)
    header_length = _QCOW2_V2_HEADER_LENGTH
    if version >= 3 and len(header) >= _QCOW2_V3_HEADER_LENGTH_AT + 4:
        (header_length,) = struct.unpack_from(">I", header, _QCOW2_V3_HEADER_LENGTH_AT)
    needs = {
        "header": header_length,
        "L1 table": l1_offset + 8 * l1_size,
        "refcount table": refcount_offset + (refcount_clusters << cluster_bits),
    }
    for table, end in needs.items():
        if size < end:
            raise ImageError(f"{shown_as} is truncated: its {table} ends at byte {end} but the file has {size} bytes")


def _check_bzimage(path: Path, *, shown_as: Path) -> None:
    with path.open("rb") as file:
        file.seek(_BZIMAGE_MAGIC_OFFSET)
        magic = file.read(len(_BZIMAGE_MAGIC))
    if magic != _BZIMAGE_MAGIC:
        raise InvalidInput("kernel", f"{shown_as} is not a Linux kernel (bzImage): no 'HdrS' at 0x202")


def _check_initrd(path: Path, *, shown_as: Path) -> None:
    with path.open("rb") as file:
        head = file.read(8)
    if not head:
        raise InvalidInput("initrd", f"{shown_as} is empty")
    if not any(head.startswith(magic) for magic in _INITRD_MAGICS):
        raise InvalidInput(
            "initrd", f"{shown_as} is not an initramfs: expected a cpio archive or a gzip, xz, zstd or lz4 stream"
        )


# -- copying ----------------------------------------------------------------------------


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` over ``dst``, keeping zero chunks as holes (``SparseWriter``); return the sha256.

    Disk images are mostly zeros; seeking over them keeps the copy as sparse as the
    original (or sparser) without changing a byte a reader sees.
    """
    try:
        with src.open("rb") as reader, dst.open("r+b") as writer:
            sparse = SparseWriter(writer)
            while chunk := reader.read(CHUNK):
                sparse.write(chunk)
            return sparse.finish()
    except OSError as err:
        raise ImageError(f"copying {src} into the image store failed: {err.strerror or err}") from err


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    # Makes the new names durable: after a crash the files exist under them, or not at all.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
