"""The host's two storage pools and the volumes in them, all through the libvirt connection.

Using libvirt's storage API (not file paths) is what lets a remote host receive images and
serve console logs without ssh or scp. Shared storage is one more directory pool per shared
directory, named after it (``SharedStorage.pool_name``); instance volumes of a VM on shared
storage live there instead of in the instance pool.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from flexvm.drivers.libvirt.connection import Connection, is_missing, require_libvirt
from flexvm.drivers.libvirt.domain_xml import PoolPaths
from flexvm.model.storage import SharedStorage

STORAGE_ROOT = PurePosixPath("/var/lib/libvirt/flexvm")
IMAGE_POOL = "flexvm-images"
INSTANCE_POOL = "flexvm-instances"
CHUNK = 1024 * 1024
REFRESH_PATIENCE = 60.0  # seconds to wait for other streams on a pool before a rescan gives up


def pool_xml(name: str, path: PurePosixPath) -> str:
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = str(path)
    return ET.tostring(pool, encoding="unicode")


def volume_xml(name: str, capacity: int, fmt: str, backing: tuple[str, str] | None = None) -> str:
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", type=fmt)
    if backing is not None:
        store = ET.SubElement(volume, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", type=backing[1])
    return ET.tostring(volume, encoding="unicode")


def pool_path(xml: str) -> str:
    """A pool's target directory, from its XML."""
    return ET.fromstring(xml).findtext("target/path") or ""


class Storage:
    def __init__(self, connection: Connection, root: PurePosixPath = STORAGE_ROOT) -> None:
        self.connection = connection
        self.paths = PoolPaths(images=root / "images", instances=root / "instances")
        self._pools: dict[str, Any] = {}
        self._paths: dict[str, PurePosixPath] = {IMAGE_POOL: self.paths.images, INSTANCE_POOL: self.paths.instances}

    def instance_pool(self, store: SharedStorage | None) -> str:
        """The pool instance volumes go to: the host's own, or the shared directory's."""
        if store is None:
            return INSTANCE_POOL
        self._paths[store.pool_name] = PurePosixPath(store.path)
        return store.pool_name

    def pool(self, name: str) -> Any:
        """The pool, defined, built, started and set to autostart on first use. A shared pool is
        never built: a directory made here would be this host's own, not the one the others see.
        A shared pool left from an earlier storage of the same name at another path is made anew."""
        conn = self.connection.get()
        path = self._paths[name]
        shared = name not in (IMAGE_POOL, INSTANCE_POOL)
        with self.connection.translate(f"storage pool {name}", conn):
            try:
                pool = conn.storagePoolLookupByName(name)
            except require_libvirt().libvirtError as err:
                if not is_missing(err):
                    raise
                pool = None
            if pool is not None and shared and pool_path(pool.XMLDesc(0)) != str(path):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
                pool = None
            if pool is None:
                pool = conn.storagePoolDefineXML(pool_xml(name, path), 0)
                if not shared:
                    pool.build(0)
                pool.setAutostart(1)
            if not pool.isActive():
                try:
                    pool.create(0)
                except require_libvirt().libvirtError:
                    if shared:  # not mounted here (yet): leave no pool behind that names it
                        pool.undefine()
                    raise
        return pool

    def lookup(self, pool_name: str, volume: str, *, refresh: bool = False) -> Any | None:
        """The volume, or None. With ``refresh``, a volume libvirt has not seen yet (a console log
        virtlogd created) is found by rescanning the pool, but only when the plain lookup misses."""
        pool = self.pool(pool_name)
        vol = self._lookup(pool, volume)
        if vol is None and refresh:
            self.refresh(pool)
            vol = self._lookup(pool, volume)
        return vol

    def _lookup(self, pool: Any, volume: str) -> Any | None:
        with self.connection.translate(f"volume {volume}"):
            try:
                return pool.storageVolLookupByName(volume)
            except require_libvirt().libvirtError as err:
                if is_missing(err):
                    return None
                raise

    def refresh(self, pool: Any) -> None:
        """Rescan a pool. libvirt refuses while a volume upload or download is streaming on it, so
        wait for those (they are short) instead of failing the caller's operation."""
        lv = require_libvirt()
        deadline = time.monotonic() + REFRESH_PATIENCE
        while True:
            try:
                pool.refresh(0)
                return
            except lv.libvirtError as err:
                busy = "asynchronous jobs running" in (err.get_error_message() or "")
                if not busy or time.monotonic() > deadline:
                    with self.connection.translate(f"refreshing pool {pool.name()}"):
                        raise
                time.sleep(0.1)

    def upload(self, pool_name: str, volume: str, source: Path) -> None:
        """Stream a local file into a new volume; a failed upload deletes what it made."""
        size = source.stat().st_size
        pool = self.pool(pool_name)
        conn = self.connection.get()
        with self.connection.translate(f"uploading {source.name} as {volume}", conn):
            existing = self.lookup(pool_name, volume)
            if existing is not None:
                existing.delete(0)
            vol = pool.createXML(volume_xml(volume, size, "raw"), 0)
            try:
                stream = conn.newStream(0)
                vol.upload(stream, 0, size, 0)
                with source.open("rb") as handle:
                    stream.sendAll(_reader(handle), None)
                stream.finish()
            except BaseException:
                vol.delete(0)
                raise

    def download(self, pool_name: str, volume: str, offset: int) -> bytes:
        vol = self.lookup(pool_name, volume, refresh=True)
        if vol is None:
            return b""
        conn = self.connection.get()
        with self.connection.translate(f"reading volume {volume}", conn):
            length = vol.info()[1]  # capacity: a plain file's size
            if offset >= length:
                return b""
            stream = conn.newStream(0)
            vol.download(stream, offset, length - offset, 0)
            chunks = []
            while True:
                data = stream.recv(CHUNK)
                if not data:
                    break
                chunks.append(data)
            stream.finish()
            return b"".join(chunks)

    def download_to_file(self, pool_name: str, volume: str, target: Path) -> None:
        """Stream a whole volume into a local file (a failed copy removes the partial file)."""
        vol = self.lookup(pool_name, volume, refresh=True)
        if vol is None:
            raise FileNotFoundError(f"volume {volume} is not on this host")
        conn = self.connection.get()
        try:
            with self.connection.translate(f"downloading volume {volume}", conn), target.open("wb") as out:
                stream = conn.newStream(0)
                vol.download(stream, 0, 0, 0)
                while True:
                    data = stream.recv(CHUNK)
                    if not data:
                        break
                    out.write(data)
                stream.finish()
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    def delete(self, pool_name: str, volume: str) -> None:
        vol = self.lookup(pool_name, volume, refresh=True)
        if vol is not None:
            with self.connection.translate(f"deleting volume {volume}"):
                vol.delete(0)

    def names(self, pool_name: str) -> list[str]:
        pool = self.pool(pool_name)
        self.refresh(pool)
        with self.connection.translate(f"listing pool {pool_name}"):
            return sorted(pool.listVolumes())

    def create_overlay(
        self, volume: str, backing_volume: str, backing_format: str, size_bytes: int, pool_name: str = INSTANCE_POOL
    ) -> None:
        backing = self.lookup(IMAGE_POOL, backing_volume)
        if backing is None:
            raise FileNotFoundError(f"image volume {backing_volume} is not on this host")
        pool = self.pool(pool_name)
        with self.connection.translate(f"creating disk {volume}"):
            xml = volume_xml(volume, size_bytes, "qcow2", (backing.path(), backing_format))
            pool.createXML(xml, 0)

    def overlays_on(self, image_volume: str) -> list[str]:
        """Instance-pool volumes whose backing file is the given image volume."""
        image = self.lookup(IMAGE_POOL, image_volume)
        if image is None:
            return []
        path = image.path()
        pool = self.pool(INSTANCE_POOL)
        users = []
        with self.connection.translate("listing disks backed by an image"):
            for vol in pool.listAllVolumes(0):
                backing = ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path")
                if backing == path:
                    users.append(vol.name())
        return sorted(users)

    def resize(self, volume: str, size_bytes: int, pool_name: str = INSTANCE_POOL) -> None:
        vol = self.lookup(pool_name, volume, refresh=True)
        if vol is None:
            raise FileNotFoundError(f"disk {volume} is not on this host")
        with self.connection.translate(f"resizing disk {volume}"):
            vol.resize(size_bytes, 0)

    def check_writable(self, pool_name: str) -> None:
        """Create and delete a small volume: the directory is there and this host may write to it."""
        probe = f".flexvm-probe-{uuid.uuid4().hex[:12]}"
        pool = self.pool(pool_name)
        with self.connection.translate(f"writing to pool {pool_name}"):
            vol = pool.createXML(volume_xml(probe, 4096, "raw"), 0)
            vol.delete(0)

    def pool_space(self) -> tuple[int, int]:
        """(capacity, available) bytes of the filesystem under the instance pool."""
        pool = self.pool(INSTANCE_POOL)
        self.refresh(pool)
        with self.connection.translate("reading pool space"):
            _state, capacity, _allocation, available = pool.info()
        return capacity, available


def _reader(handle: Any) -> Callable[[Any, int, Any], bytes]:
    def read(_stream: Any, nbytes: int, _opaque: Any) -> bytes:
        return handle.read(min(nbytes, CHUNK))

    return read
