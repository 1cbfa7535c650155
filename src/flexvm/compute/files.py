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
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexvm import programs
from flexvm.compute.lifecycle import OsDiskSource, VmService
from flexvm.compute.operations import OperationContext
from flexvm.errors import AlreadyExists, ImageError, InvalidInput, InvalidState
from flexvm.model.image import Image
from flexvm.model.names import check_name
from flexvm.model.operation import Operation
from flexvm.model.vm import PowerState, Vm
from flexvm.store.db import utcnow
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
    def __init__(self, vms: VmService) -> None:
        self.vms = vms
        self.db = vms.db
        self.runner = vms.runner
        self.images = vms.images

    # --- snapshots -----------------------------------------------------------------------
    def snapshot(self, name: str, snapshot: str | None = None) -> Operation:
        snapshot = snapshot or f"snap-{utcnow().strftime('%Y%m%d-%H%M%S')}"
        check_name("snapshot", snapshot)

        def work(ctx: OperationContext, vm: Vm) -> dict[str, Any]:
            with ctx.step("snapshot", f"{snapshot} of {vm.name}" + (" with its memory" if vm.host else "")):
                self._driver(vm).create_snapshot(vm.domain_name, snapshot)
            return {"snapshot": snapshot}

        return self._on_vm(name, "vm.snapshot", work, {"snapshot": snapshot}, defined=True)

    def snapshots(self, name: str) -> list[str]:
        vm = self.vms.get(name)
        if vm.host is None:
            return []
        return self._driver(vm).list_snapshots(vm.domain_name)

    def revert(self, name: str, snapshot: str) -> Operation:
        check_name("snapshot", snapshot)

        def work(ctx: OperationContext, vm: Vm) -> dict[str, Any]:
            driver = self._driver(vm)
            with ctx.step("revert", f"{vm.name} back to {snapshot}"):
                driver.revert_snapshot(vm.domain_name, snapshot)
            info = driver.guest_info(vm.domain_name)
            running = info is not None and info.state.value == "running"
            self.vms.update_record(vm.id, power_state=PowerState.RUNNING if running else PowerState.STOPPED)
            return {"snapshot": snapshot, "running": running}

        return self._on_vm(name, "vm.revert", work, {"snapshot": snapshot}, defined=True)

    def delete_snapshot(self, name: str, snapshot: str) -> Operation:
        check_name("snapshot", snapshot)

        def work(ctx: OperationContext, vm: Vm) -> dict[str, Any]:
            with ctx.step("delete", f"snapshot {snapshot} of {vm.name}"):
                self._driver(vm).delete_snapshot(vm.domain_name, snapshot)
            return {"snapshot": snapshot}

        return self._on_vm(name, "vm.snapshot-delete", work, {"snapshot": snapshot}, defined=True)

    # --- capture and export --------------------------------------------------------------
    def capture(self, name: str, image_name: str) -> Operation:
        """A new image from a stopped VM's disk (flattened onto the image it was made from)."""
        check_name("image", image_name)
        with self.db.session() as session:
            if ImageRepo(session).find(image_name) is not None:
                raise AlreadyExists("image", image_name)

        def work(ctx: OperationContext, vm: Vm) -> dict[str, Any]:
            base = self.images.get(vm.image)
            with tempfile.TemporaryDirectory(prefix="flexvm-capture-") as tmp:
                flat = self._flatten(ctx, vm, base, Path(tmp))
                with ctx.step("import", f"storing it as image '{image_name}'"):
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
                    self.images.record(image)
            return {"image": image_name, "sha256": image.sha256}

        return self._on_vm(name, "vm.capture", work, {"image": image_name}, stopped=True)

    def export(self, name: str, target: Path) -> Operation:
        """Write the VM to one file: manifest, flattened disk, kernel and initrd."""
        target = self._target_path(target)

        def work(ctx: OperationContext, vm: Vm) -> dict[str, Any]:
            base = self.images.get(vm.image)
            with tempfile.TemporaryDirectory(prefix="flexvm-export-") as tmp:
                flat = self._flatten(ctx, vm, base, Path(tmp))
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
                with ctx.step("write", f"writing {target}"):
                    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
                    try:
                        with tarfile.open(partial, "w") as archive:
                            _add_bytes(archive, MANIFEST, json.dumps(manifest.__dict__, indent=2).encode())
                            archive.add(flat, arcname="disk.qcow2")
                            if base.kernel_file:
                                archive.add(self.images.store.path_of(base.kernel_file), arcname="kernel")
                            if base.initrd_file:
                                archive.add(self.images.store.path_of(base.initrd_file), arcname="initrd")
                        partial.replace(target)
                    finally:
                        partial.unlink(missing_ok=True)
            return {"file": str(target), "bytes": target.stat().st_size}

        return self._on_vm(name, "vm.export", work, {"file": str(target)}, stopped=True)

    def import_vm(self, source: Path, name: str | None = None, size: str | None = None) -> Operation:
        """Make a VM from an exported file; it starts from the disk exactly as exported."""
        if not source.is_absolute() or not source.is_file():
            raise InvalidInput("file", f"{source} is not a file (give an absolute path the server can read)")
        manifest = read_manifest(source)
        name = check_name("name", name or manifest.name)
        size_name = size or manifest.size
        self.vms.sizes.get(size_name)
        with self.db.session() as session:
            if VmRepo(session).find(name) is not None:
                raise AlreadyExists("VM", name)
        image = self._image_for(source, manifest, name)
        return self.vms.create(
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
    def _on_vm(
        self, name: str, kind: str, work: Any, params: dict[str, Any], *, stopped: bool = False, defined: bool = False
    ) -> Operation:
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            self.vms.check_usable(vm)
            if stopped and vm.power_state not in (PowerState.STOPPED, PowerState.DEALLOCATED):
                raise InvalidState(f"VM '{name}' is {vm.power_state.value}; stop it first so its disk is consistent")
            if defined and vm.host is None:
                raise InvalidState(f"VM '{name}' is deallocated; snapshots live with its definition: start it first")
            operation = self.runner.record(session, kind, "vm", name, vm=vm, params=params)
        return self.runner.launch(operation, lambda ctx: work(ctx, vm))

    def _driver(self, vm: Vm) -> Any:
        host = vm.host or vm.disk_host
        if host is None:
            raise InvalidState(f"VM '{vm.name}' has no host")
        return self.vms.hosts.driver(host)

    def _file(self, stored: str | None) -> Path | None:
        return None if stored is None else self.images.store.path_of(stored)

    def _flatten(self, ctx: OperationContext, vm: Vm, base: Image, folder: Path) -> Path:
        """The VM's disk as one standalone qcow2: its overlay, fetched, on top of the stored image."""
        overlay, flat = folder / "overlay.qcow2", folder / "disk.qcow2"
        with ctx.step("fetch", f"fetching the disk of {vm.name}"):
            self._driver(vm).download_instance_volume(vm.os_disk.name, overlay)
        with ctx.step("flatten", "merging it with its image into one file"):
            backing = self.images.store.path_of(base.disk_file)
            _run(["qemu-img", "rebase", "-u", "-F", base.format, "-b", str(backing), str(overlay)])
            _run(["qemu-img", "convert", "-O", "qcow2", str(overlay), str(flat)])
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
