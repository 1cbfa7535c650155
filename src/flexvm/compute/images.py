"""Images as a service: import and build (as operations), list, delete, and copy to hosts."""

from __future__ import annotations

import builtins
import tempfile
import threading
from pathlib import Path

from flexvm.compute.guest_boot import image_volume
from flexvm.compute.operations import OperationContext, OperationRunner
from flexvm.drivers.base import Driver
from flexvm.errors import AlreadyExists, Conflict, FlexvmError, ImageError, InvalidInput
from flexvm.images.store import ImageStore
from flexvm.model.image import Image
from flexvm.model.names import check_name
from flexvm.model.operation import Operation
from flexvm.store.db import Database
from flexvm.store.repositories import ImageRepo

TINY = "tiny"
HOST_FEATURES = ("kvm", "tcg")  # what a host offers that an image may require: its accelerator


class ImageService:
    def __init__(self, db: Database, runner: OperationRunner, store: ImageStore) -> None:
        self.db = db
        self.runner = runner
        self.store = store
        self._upload_locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def list(self) -> list[Image]:
        with self.db.session() as session:
            return ImageRepo(session).list()

    def get(self, name: str) -> Image:
        with self.db.session() as session:
            return ImageRepo(session).get(name)

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

        def work(ctx: OperationContext) -> dict[str, object]:
            with ctx.step("import", f"checking and copying {disk.name}"):
                image = self.store.import_image(
                    name,
                    disk,
                    kernel=kernel,
                    initrd=initrd,
                    cmdline=cmdline,
                    ready_marker=ready_marker,
                    cloud_init=cloud_init,
                    description=description,
                    expected_sha256=sha256,
                )
            image.requires = needs
            self.record(image)
            return {"sha256": image.sha256, "virtual_size": image.virtual_size}

        return self._submit("image.import", name, work, {"disk": str(disk)})

    def build_tiny(self, name: str = TINY) -> Operation:
        check_name("name", name)

        def work(ctx: OperationContext) -> dict[str, object]:
            from flexvm.images.tiny.build import build_tiny_image

            with tempfile.TemporaryDirectory(prefix="flexvm-tiny-") as tmp:
                with ctx.step("build", "building kernel, initramfs and root disk from Debian packages"):
                    tiny = build_tiny_image(Path(tmp))
                with ctx.step("import", "checking and storing the image"):
                    image = self.store.import_image(
                        name,
                        tiny.disk,
                        kernel=tiny.kernel,
                        initrd=tiny.initrd,
                        cmdline=tiny.cmdline,
                        ready_marker=tiny.ready_marker,
                        description="flexvm's built-in test image: busybox, virtio, HTTP on port 80",
                    )
            self.record(image)
            return {"sha256": image.sha256, "file_size": image.file_size}

        return self._submit("image.build", name, work, {"recipe": "tiny"})

    def _submit(self, kind: str, name: str, work: object, params: dict[str, object]) -> Operation:
        with self.db.session() as session:
            if ImageRepo(session).find(name) is not None:
                raise AlreadyExists("image", name)
            operation = self.runner.record(session, kind, "image", name, params=params)
        return self.runner.launch(operation, work)  # type: ignore[arg-type]

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
                    raise ImageError(f"image '{image.name}' is missing its file {files[kind]} in the store")
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
