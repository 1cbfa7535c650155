"""Images as a service: import and build (as operations), upload (in the request), list, delete,
and copy to hosts."""

from __future__ import annotations

import builtins
import dataclasses
import logging
import tempfile
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from flexvm.compute.guest_boot import image_volume
from flexvm.drivers.base import Driver
from flexvm.errors import (
    AlreadyExists,
    Busy,
    Conflict,
    DatabaseUnavailable,
    FlexvmError,
    ImageError,
    InvalidInput,
    TooLarge,
)
from flexvm.images.store import ImageStore, Upload, normalise_sha256
from flexvm.model.image import Image
from flexvm.model.names import check_name
from flexvm.model.operation import Operation
from flexvm.model.projects import check_project, image_key
from flexvm.operations.engine import UNFINISHED, Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database
from flexvm.store.repositories import ImageRepo, OperationRepo

log = logging.getLogger(__name__)

TINY = "tiny"
HOST_FEATURES = ("kvm", "tcg")  # what a host offers that an image may require: its accelerator


class ImageService:
    def __init__(self, db: Database, engine: Engine, store: ImageStore) -> None:
        self.db = db
        self.engine = engine
        self.store = store
        engine.register("image.import", self._import_work)
        engine.register("image.build", self._build_work)
        self._upload_locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def list(self) -> list[Image]:
        with self.db.session() as session:
            return ImageRepo(session).list()

    def get(self, name: str) -> Image:
        with self.db.session() as session:
            return ImageRepo(session).get(name)

    def find(self, name: str) -> Image | None:
        with self.db.session() as session:
            return ImageRepo(session).find(name)

    # --- making images -------------------------------------------------------------------
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
        sha256: str | None = None,
        requires: builtins.list[str] | None = None,
    ) -> Operation:
        check_name("name", name)
        needs = sorted(set(requires or []))
        unknown = [feature for feature in needs if feature not in HOST_FEATURES]
        if unknown:
            raise InvalidInput(
                "requires", f"unknown host feature(s) {', '.join(unknown)}; known: {', '.join(HOST_FEATURES)}"
            )
        params = {
            "disk": str(disk),
            "kernel": str(kernel) if kernel else None,
            "initrd": str(initrd) if initrd else None,
            "cmdline": cmdline,
            "ready_marker": ready_marker,
            "cloud_init": cloud_init,
            "description": description,
            "sha256": sha256,
            "requires": needs,
        }
        return self._submit("image.import", name, params)

    def build_tiny(self, name: str = TINY) -> Operation:
        check_name("name", name)
        return self._submit("image.build", name, {"recipe": "tiny"})

    def _import_work(self, run: Run) -> dict[str, object]:
        name, p = run.operation.target_name, run.params

        def store() -> dict[str, Any]:
            self.store.discard_name(name)  # what an interrupted attempt published, unrecorded
            image = self.store.import_image(
                name,
                Path(p["disk"]),
                kernel=Path(p["kernel"]) if p.get("kernel") else None,
                initrd=Path(p["initrd"]) if p.get("initrd") else None,
                cmdline=p.get("cmdline"),
                ready_marker=p.get("ready_marker"),
                cloud_init=bool(p.get("cloud_init")),
                description=p.get("description") or "",
                expected_sha256=p.get("sha256"),
            )
            image.requires = list(p.get("requires") or [])
            return image_out(image)

        out = run.step("import", store, undo=self._unstore, detail=f"checking and copying {Path(p['disk']).name}")
        self._register(run, out)
        return {"sha256": out["sha256"], "virtual_size": out["virtual_size"]}

    def _build_work(self, run: Run) -> dict[str, object]:
        name = run.operation.target_name

        def build() -> dict[str, Any]:
            from flexvm.images.tiny.build import build_tiny_image

            self.store.discard_name(name)
            with tempfile.TemporaryDirectory(prefix="flexvm-tiny-") as tmp:
                tiny = build_tiny_image(Path(tmp))
                image = self.store.import_image(
                    name,
                    tiny.disk,
                    kernel=tiny.kernel,
                    initrd=tiny.initrd,
                    cmdline=tiny.cmdline,
                    ready_marker=tiny.ready_marker,
                    description="flexvm's built-in test image: busybox, virtio, HTTP on port 80",
                )
            return image_out(image)

        out = run.step(
            "build", build, undo=self._unstore, detail="building kernel, initramfs and root disk from Debian packages"
        )
        self._register(run, out)
        return {"sha256": out["sha256"], "file_size": out["file_size"]}

    def upload(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        project: str | None,
        limit: int,
        length: int | None = None,
        sha256: str | None = None,
        cloud_init: bool = False,
        description: str = "",
    ) -> Image:
        """An image from a disk sent as a stream of bytes: recorded once it is whole and passes the
        checks an import's copy passes; refused otherwise, leaving nothing behind.

        Private to ``project`` (recorded under its key, ``project.name``), or everyone's when
        ``project`` is None. ``length``: how many bytes the sender announced; fewer is a cut-off
        upload. Not an operation: the bytes are this request's, so no other server could resume
        it; the store's staging file stands for it instead, should this server die (see
        ``images/staging.py``).
        """
        check_name("name", name)
        key = image_key(None if project is None else check_project("project", project), name)
        expected = normalise_sha256("sha256", sha256)
        if length is not None and length > limit:
            raise TooLarge("body", length, limit)
        self.sweep()
        with self.store.receive(key, limit=limit, cloud_init=cloud_init, description=description) as upload:
            # Checked once this upload shows in the store: an import submitted from now on sees it,
            # and one submitted before is seen here.
            self._refuse_taken(key, upload)
            for chunk in chunks:
                upload.write(chunk)
            if length is not None and upload.received != length:
                raise InvalidInput("body", f"the upload was cut off: {upload.received} of {length} bytes arrived")
            actual = upload.finish()
            if expected is not None and actual != expected:
                raise InvalidInput(
                    "sha256",
                    f"the uploaded disk's sha256 is {actual}, not {expected}",
                    details={"expected_sha256": expected, "actual_sha256": actual},
                )
            try:
                upload.check()
            except ImageError as err:  # the disk itself is what is wrong: bad input
                raise InvalidInput("body", err.message, details=err.details) from err
            image = upload.publish()
            try:
                with self.db.session() as session:
                    ImageRepo(session).add(image)
            except DatabaseUnavailable:
                # The connection may have gone during COMMIT: whether the record was written is
                # unknown, so the files stay for the next sweep, which asks the database.
                upload.undecided()
                raise
            upload.recorded()
        return image

    def sweep(self) -> builtins.list[str]:
        """Take back what dead uploads and imports left staged in the image store; the names removed."""

        def recorded(file_name: str) -> bool:
            with self.db.session() as session:
                return any(file_name in image.files for image in ImageRepo(session).list())

        removed = self.store.sweep(recorded)
        if removed:
            log.info("image store: removed what interrupted uploads and imports left: %s", ", ".join(removed))
        return removed

    def _refuse_taken(self, key: str, upload: Upload) -> None:
        with self.db.session() as session:
            self._refuse_held(session, key)
        if self.store.receiving(key, besides=upload):
            raise _uploading(key)

    def _refuse_held(self, session: Session, name: str) -> None:
        if ImageRepo(session).find(name) is not None:
            raise AlreadyExists("image", name)
        # The name is held by the operation making it: a second one would clash in the store.
        making = [
            op
            for op in OperationRepo(session).list(limit=1000, target=name, statuses=UNFINISHED)
            if op.target_kind == "image"
        ]
        if making:
            raise Busy("image", name, making[0].id)

    def _unstore(self, out: dict[str, Any]) -> None:
        self.store.delete_files(image_in(out))

    def _register(self, run: Run, out: dict[str, Any]) -> None:
        run.db_step("register", lambda session: ImageRepo(session).add(image_in(out)), detail="recording the image")

    def _submit(self, kind: str, name: str, params: dict[str, Any]) -> Operation:
        with self.db.session() as session:
            self._refuse_held(session, name)
            # An upload's check runs in a transaction of its own after it shows in the store, so
            # this one and that one cannot both miss each other.
            if self.store.receiving(name):
                raise _uploading(name)
            operation = self.engine.record(session, kind, "image", name, params=params)
        return self.engine.launch(operation)

    def record(self, image: Image) -> None:
        try:
            with self.db.session() as session:
                ImageRepo(session).add(image)
        except FlexvmError:
            self.store.delete_files(image)  # someone registered the name meanwhile: keep theirs
            raise

    # --- removing ------------------------------------------------------------------------
    def delete(self, name: str, drivers: builtins.list[Driver]) -> builtins.list[str]:
        """Remove an image no VM uses, from the store and every host; returns hosts not reached."""
        with self.db.session() as session:
            repo = ImageRepo(session)
            image = repo.get(name)
            users = repo.users(name)
            if users:
                raise Conflict(f"image '{name}' is used by VMs: {', '.join(users)}", details={"vms": users})
            repo.delete(name)
        # Copies on hosts go too. A host that cannot be reached, or where the copy still backs a
        # disk flexvm does not know (another installation's), keeps it: harmless, since volumes are
        # named by content, and reported rather than blocking the delete.
        unreachable = []
        for driver in drivers:
            try:
                # The disk first: if it still backs someone's overlay the delete stops before
                # anything is gone. The marker last, so a half-removed image is never trusted.
                for kind in [*self._kinds(image), "complete"]:
                    driver.delete_image_volume(image_volume(image, kind))
            except FlexvmError:
                unreachable.append(driver.uri)
        self.store.delete_files(image)
        return unreachable

    # --- hosts ---------------------------------------------------------------------------
    @staticmethod
    def _kinds(image: Image) -> builtins.list[str]:
        return ["disk"] + (["kernel"] if image.kernel_file else []) + (["initrd"] if image.initrd_file else [])

    def ensure_on_host(self, driver: Driver, image: Image) -> bool:
        """Upload the image's files to the host once; True if anything was uploaded.

        A '.complete' volume is written last. Without it every file is uploaded again (an upload
        cut short is redone, not trusted); with it, only files that have gone missing are.
        """
        marker = image_volume(image, "complete")
        files = {kind: getattr(image, f"{kind}_file") for kind in self._kinds(image)}
        with self._upload_lock(driver.uri, image.volume_prefix):
            complete = driver.has_image_volume(marker)
            todo = [kind for kind in files if not complete or not driver.has_image_volume(image_volume(image, kind))]
            if not todo:
                return False
            for kind in todo:
                source = self.store.path_of(files[kind])
                if not source.exists():
                    # With several servers, the one running this may not be where the image was
                    # imported: the store must be shared (the README says so).
                    raise ImageError(
                        f"image '{image.name}' is missing its file {files[kind]} in this server's image store "
                        f"({self.store.root}); servers on several machines must share that directory",
                        details={"image": image.name, "file": files[kind], "store": str(self.store.root)},
                    )
                driver.upload_image_volume(image_volume(image, kind), source)
            if not complete:
                with tempfile.NamedTemporaryFile("w", suffix=".complete") as note:
                    note.write(image.sha256 + "\n")
                    note.flush()
                    driver.upload_image_volume(marker, Path(note.name))
            return True

    def _upload_lock(self, uri: str, prefix: str) -> threading.Lock:
        with self._locks_guard:
            return self._upload_locks.setdefault((uri, prefix), threading.Lock())


def _uploading(name: str) -> Conflict:
    return Conflict(
        f"image '{name}' is being uploaded by another request; wait for it to finish",
        details={"kind": "image", "name": name},
    )


def image_out(image: Image) -> dict[str, Any]:
    """An image as a step records it (JSON)."""
    out = dataclasses.asdict(image)
    out["created_at"] = image.created_at.isoformat()
    return out


def image_in(out: dict[str, Any]) -> Image:
    return Image(**{**out, "created_at": datetime.fromisoformat(out["created_at"])})
