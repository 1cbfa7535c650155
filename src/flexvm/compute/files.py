"""A VM is files: snapshots of its disk, a new image captured from it, and a file to carry it away.

- snapshot: an internal qcow2 snapshot of the OS disk (and of memory, if the VM runs);
- capture: the disk of a stopped VM, flattened onto its image, becomes a new image;
- export: a tar holding a manifest, the flattened disk and the image's kernel and initrd;
- import: the tar becomes a VM again, its disk exactly as exported (the image it came from is
  reused when this server has it, by content; otherwise registered from the tar).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexvm import programs
from flexvm.access.quotas import admit
from flexvm.compute.hosts import HostService
from flexvm.compute.images import ImageService, image_in, image_out
from flexvm.compute.sizes import SizeService
from flexvm.compute.vm_create import OsDiskSource, VmCreator
from flexvm.compute.vm_records import VmRecords, check_usable, power_step
from flexvm.errors import AlreadyExists, ImageError, InvalidInput, InvalidState, NotFound
from flexvm.model.access import Quotas
from flexvm.model.guest import GuestState
from flexvm.model.image import Image
from flexvm.model.names import check_name
from flexvm.model.operation import Operation
from flexvm.model.projects import DEFAULT_PROJECT, check_key, image_project, key_of, name_of
from flexvm.model.vm import PowerState, Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import ImageRepo, VmRepo

EXPORT_FORMAT = "flexvm-vm-export/1"
MANIFEST = "manifest.json"


@dataclass
class ExportManifest:
    name: str
    size: str
    disk_bytes: int
    image: dict[str, Any]
    user_data: str | None
    exported_at: str
    format: str = EXPORT_FORMAT


class VmFiles:
    def __init__(
        self,
        db: Database,
        engine: Engine,
        hosts: HostService,
        sizes: SizeService,
        images: ImageService,
        records: VmRecords,
        creator: VmCreator,
        work_root: Path,
    ) -> None:
        self.db = db
        self.engine = engine
        self.hosts = hosts
        self.sizes = sizes
        self.images = images
        self.records = records
        self.creator = creator
        self.work_root = work_root  # each operation's files in progress, kept across a restart
        engine.register("vm.snapshot", self._snapshot_work)
        engine.register("vm.revert", self._revert_work)
        engine.register("vm.snapshot-delete", self._delete_snapshot_work)
        engine.register("vm.capture", self._capture_work)
        engine.register("vm.export", self._export_work)

    # --- snapshots -----------------------------------------------------------------------
    def snapshot(self, name: str, snapshot: str | None = None) -> Operation:
        snapshot = snapshot or f"snap-{utcnow().strftime('%Y%m%d-%H%M%S')}"
        check_name("snapshot", snapshot)
        if snapshot in self.snapshots(name):
            raise AlreadyExists("snapshot", f"{snapshot}' of VM '{name}")
        return self._on_vm(name, "vm.snapshot", {"snapshot": snapshot}, defined=True)

    def _snapshot_work(self, run: Run) -> dict[str, Any]:
        vm, snapshot = self._vm(run), run.params["snapshot"]
        driver = self._driver(vm)

        def take() -> None:
            if snapshot not in driver.list_snapshots(vm.domain_name):  # a re-run finds it taken
                driver.create_snapshot(vm.domain_name, snapshot)

        run.step("snapshot", take, detail=f"{snapshot} of {vm.name}" + (" with its memory" if vm.host else ""))
        return {"snapshot": snapshot}

    def snapshots(self, name: str) -> list[str]:
        vm = self.records.get(name)
        if vm.host is None:
            return []
        return self._driver(vm).list_snapshots(vm.domain_name)

    def revert(self, name: str, snapshot: str) -> Operation:
        check_name("snapshot", snapshot)
        self._known_snapshot(name, snapshot)
        return self._on_vm(name, "vm.revert", {"snapshot": snapshot}, defined=True)

    def _revert_work(self, run: Run) -> dict[str, Any]:
        vm, snapshot = self._vm(run), run.params["snapshot"]
        driver = self._driver(vm)
        run.step(
            "revert", lambda: driver.revert_snapshot(vm.domain_name, snapshot), detail=f"{vm.name} back to {snapshot}"
        )
        running = bool(run.step("inspect", lambda: _runs(driver, vm), detail="whether it runs after the revert"))
        power_step(run, "recorded", vm.id, PowerState.RUNNING if running else PowerState.STOPPED)
        return {"snapshot": snapshot, "running": running}

    def delete_snapshot(self, name: str, snapshot: str) -> Operation:
        check_name("snapshot", snapshot)
        self._known_snapshot(name, snapshot)
        return self._on_vm(name, "vm.snapshot-delete", {"snapshot": snapshot}, defined=True)

    def _delete_snapshot_work(self, run: Run) -> dict[str, Any]:
        vm, snapshot = self._vm(run), run.params["snapshot"]
        driver = self._driver(vm)

        def delete() -> None:
            if snapshot in driver.list_snapshots(vm.domain_name):
                driver.delete_snapshot(vm.domain_name, snapshot)

        run.step("delete", delete, detail=f"snapshot {snapshot} of {vm.name}")
        return {"snapshot": snapshot}

    # --- capture and export --------------------------------------------------------------
    def capture(self, name: str, image_name: str) -> Operation:
        """A new image from a stopped VM's disk (flattened onto the image it was made from)."""
        check_key("image", image_name)
        with self.db.session() as session:
            if ImageRepo(session).find(image_name) is not None:
                raise AlreadyExists("image", image_name)
            project = image_project(image_name)
            if project is not None:  # a private image counts against its project's disk quota
                admit(session, project, Quotas(disk_bytes=VmRepo(session).get(name).disk_bytes))
        return self._on_vm(name, "vm.capture", {"image": image_name}, stopped=True)

    def _capture_work(self, run: Run) -> dict[str, Any]:
        vm, image_name = self._vm(run), run.params["image"]
        base = self.images.get(vm.image)
        flat = self._flatten(run, vm, base)

        def store() -> dict[str, Any]:
            self.images.store.discard_name(image_name)  # what an interrupted attempt published
            image = self.images.store.import_image(
                image_name,
                flat,
                kernel=self._file(base.kernel_file),
                initrd=self._file(base.initrd_file),
                cmdline=base.cmdline,
                ready_marker=base.ready_marker,
                cloud_init=base.cloud_init,
                description=f"captured from VM {vm.name} (image {base.name})",
            )
            image.requires = list(base.requires)
            return image_out(image)

        out = run.step(
            "import",
            store,
            undo=lambda o: self.images.store.delete_files(image_in(o)),
            detail=f"storing it as image '{image_name}'",
        )
        run.db_step("register", lambda session: ImageRepo(session).add(image_in(out)), detail="recording the image")
        run.step("tidy", lambda: self._tidy(run), detail="removing the working files")
        return {"image": image_name, "sha256": out["sha256"]}

    def export(self, name: str, target: Path) -> Operation:
        """Write the VM to one file: manifest, flattened disk, kernel and initrd."""
        target = self._target_path(target)
        return self._on_vm(name, "vm.export", {"file": str(target)}, stopped=True)

    def _export_work(self, run: Run) -> dict[str, Any]:
        vm, target = self._vm(run), Path(run.params["file"])
        base = self.images.get(vm.image)
        flat = self._flatten(run, vm, base)
        manifest = ExportManifest(
            name=vm.name,
            size=vm.size,
            disk_bytes=vm.disk_bytes,
            user_data=vm.user_data,
            exported_at=utcnow().isoformat(),
            image={
                "name": base.name,
                "sha256": base.sha256,
                "cmdline": base.cmdline,
                "ready_marker": base.ready_marker,
                "cloud_init": base.cloud_init,
                "requires": base.requires,
                "kernel": bool(base.kernel_file),
                "initrd": bool(base.initrd_file),
            },
        )

        def write() -> None:
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
            try:
                with tarfile.open(partial, "w") as archive:
                    _add_bytes(archive, MANIFEST, json.dumps(manifest.__dict__, indent=2).encode())
                    archive.add(flat, arcname="disk.qcow2")
                    if base.kernel_file:
                        archive.add(self.images.store.path_of(base.kernel_file), arcname="kernel")
                    if base.initrd_file:
                        archive.add(self.images.store.path_of(base.initrd_file), arcname="initrd")
                partial.replace(target)  # a re-run replaces what an interrupted one wrote
            finally:
                partial.unlink(missing_ok=True)

        run.step("write", write, undo=lambda _o: target.unlink(missing_ok=True), detail=f"writing {target}")
        run.step("tidy", lambda: self._tidy(run), detail="removing the working files")
        return {"file": str(target), "bytes": target.stat().st_size}

    def import_vm(
        self, source: Path, name: str | None = None, size: str | None = None, *, project: str = DEFAULT_PROJECT
    ) -> Operation:
        """Make a VM from an exported file, in ``project``; it starts from the disk exactly as exported."""
        if size is not None:
            self.sizes.get(size)  # a bad size is refused before the file is even looked at
        if not source.is_absolute() or not source.is_file():
            raise InvalidInput("file", f"{source} is not a file (give an absolute path the server can read)")
        manifest = read_manifest(source)
        name = key_of(project, check_name("name", name or name_of(manifest.name)))
        size_name = size or manifest.size
        self.sizes.get(size_name)
        with self.db.session() as session:
            if VmRepo(session).find(name) is not None:
                raise AlreadyExists("VM", name)
        image = self._image_for(source, manifest, name)
        return self.creator.create(
            name,
            size_name,
            image.name,
            user_data=manifest.user_data,
            os_disk=OsDiskSource(source, "disk.qcow2", manifest.disk_bytes),
        )

    def _image_for(self, source: Path, manifest: ExportManifest, vm_name: str) -> Image:
        """The image the export came from, if this server has it (same content); else one from the file."""
        for image in self.images.list():
            if image.sha256 == manifest.image["sha256"]:
                return image
        name = f"{vm_name}-base"
        with tempfile.TemporaryDirectory(prefix="flexvm-import-") as tmp:
            with tarfile.open(source) as archive:
                members = ["disk.qcow2"] + [m for m in ("kernel", "initrd") if manifest.image.get(m)]
                for member in members:
                    archive.extract(archive.getmember(member), tmp, filter="data")
            folder = Path(tmp)
            image = self.images.store.import_image(
                name,
                folder / "disk.qcow2",
                kernel=folder / "kernel" if manifest.image.get("kernel") else None,
                initrd=folder / "initrd" if manifest.image.get("initrd") else None,
                cmdline=manifest.image.get("cmdline"),
                ready_marker=manifest.image.get("ready_marker"),
                cloud_init=bool(manifest.image.get("cloud_init")),
                description=f"the base of VM {manifest.name}, imported from {source.name}",
            )
            image.requires = list(manifest.image.get("requires") or [])
            self.images.record(image)
        return image

    # --- helpers -------------------------------------------------------------------------
    def _known_snapshot(self, name: str, snapshot: str) -> None:
        """Refused before any operation: a snapshot the VM does not have (the steps themselves
        only check so that a re-run after a crash finds its work done)."""
        if snapshot not in self.snapshots(name):
            raise NotFound("snapshot", f"{snapshot}' of VM '{name}")

    def _on_vm(
        self, name: str, kind: str, params: dict[str, Any], *, stopped: bool = False, defined: bool = False
    ) -> Operation:
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            check_usable(vm)
            if stopped and vm.power_state not in (PowerState.STOPPED, PowerState.DEALLOCATED):
                raise InvalidState(f"VM '{name}' is {vm.power_state.value}; stop it first so its disk is consistent")
            if defined and vm.host is None:
                raise InvalidState(f"VM '{name}' is deallocated; snapshots live with its definition: start it first")
            operation = self.engine.record(session, kind, "vm", name, vm=vm, params={"vm_id": vm.id, **params})
        return self.engine.launch(operation)

    def _vm(self, run: Run) -> Vm:
        vm = self.records.by_id(run.params["vm_id"])
        if vm is None:
            raise NotFound("VM", run.operation.target_name)
        return vm

    def _driver(self, vm: Vm) -> Any:
        host = vm.host or vm.disk_host
        if host is None:
            raise InvalidState(f"VM '{vm.name}' has no host")
        return self.hosts.driver(host)

    def _file(self, stored: str | None) -> Path | None:
        return None if stored is None else self.images.store.path_of(stored)

    def _folder(self, run: Run) -> Path:
        return self.work_root / run.id

    def _tidy(self, run: Run) -> None:
        shutil.rmtree(self._folder(run), ignore_errors=True)

    def _flatten(self, run: Run, vm: Vm, base: Image) -> Path:
        """The VM's disk as one standalone qcow2: its overlay, fetched, on top of the stored image.
        The files live in the operation's own folder, so a resumed run finds them."""
        folder = self._folder(run)
        overlay, flat = folder / "overlay.qcow2", folder / "disk.qcow2"

        def fetch() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            self._driver(vm).download_instance_volume(vm.os_disk.name, overlay, store=vm.storage)

        def merge() -> None:
            backing = self.images.store.path_of(base.disk_file)
            _run(["qemu-img", "rebase", "-u", "-F", base.format, "-b", str(backing), str(overlay)])
            _run(["qemu-img", "convert", "-O", "qcow2", str(overlay), str(flat)])

        run.step("fetch", fetch, undo=lambda _o: self._tidy(run), detail=f"fetching the disk of {vm.name}")
        run.step("flatten", merge, detail="merging it with its image into one file")
        return flat

    @staticmethod
    def _target_path(target: Path) -> Path:
        if not target.is_absolute():
            raise InvalidInput("file", f"{target} must be an absolute path (the server writes it)")
        if target.exists():
            raise AlreadyExists("file", str(target))
        if not target.parent.is_dir():
            raise InvalidInput("file", f"{target.parent} is not a directory")
        return target


def read_manifest(source: Path) -> ExportManifest:
    try:
        with tarfile.open(source) as archive:
            handle = archive.extractfile(MANIFEST)
            if handle is None:
                raise ImageError(f"{source} has no {MANIFEST}")
            data = json.loads(handle.read())
            names = set(archive.getnames())
    except (tarfile.TarError, KeyError, json.JSONDecodeError, OSError) as err:
        raise ImageError(f"{source} is not a flexvm export: {err}") from err
    if data.get("format") != EXPORT_FORMAT:
        raise ImageError(f"{source} is format {data.get('format')!r}; this flexvm reads {EXPORT_FORMAT}")
    if "disk.qcow2" not in names:
        raise ImageError(f"{source} has no disk.qcow2")
    try:
        return ExportManifest(**data)
    except TypeError as err:
        raise ImageError(f"{source} has a manifest flexvm cannot read: {err}") from err


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(programs.command(argv), check=True, capture_output=True, text=True, timeout=3600)
    except subprocess.CalledProcessError as err:
        raise ImageError(f"{argv[0]} {argv[1]} failed: {err.stderr.strip()}") from err
    except FileNotFoundError as err:
        raise ImageError("qemu-img is missing: install qemu-utils") from err


def _runs(driver: Any, vm: Vm) -> bool:
    info = driver.guest_info(vm.domain_name)
    return info is not None and info.state is GuestState.RUNNING
