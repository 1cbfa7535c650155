"""`flexvm size …` and `flexvm image …`"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from flexvm.cli import output
from flexvm.cli.common import OutputOpt, client, finish
from flexvm.errors import InvalidInput

UPLOAD_CHUNK = 1024 * 1024

size_app = typer.Typer(help="VM sizes: Azure's catalogue and your own.", no_args_is_help=True)
image_app = typer.Typer(help="Images every VM's OS disk is an overlay of.", no_args_is_help=True)


@size_app.command("list")
def list_sizes(fmt: output.Format = OutputOpt) -> None:
    """Sizes, with how many more of each fit on the up hosts right now."""
    sizes = client().get("/sizes")
    if fmt is output.Format.json:
        output.emit_json(sizes)
        return
    output.table(
        sizes,
        [
            ("NAME", lambda s: s["name"]),
            ("VCPUS", lambda s: s["vcpus"]),
            ("MEMORY", lambda s: output.mib(s["memory_mib"])),
            ("OS DISK", lambda s: output.nbytes(s["disk_bytes"])),
            ("FAMILY", lambda s: s["family"]),
            ("SOURCE", lambda s: "built-in" if s["builtin"] else "custom"),
            ("FIT NOW", lambda s: s["fits_now"]),
        ],
    )


@size_app.command("create")
def create_size(
    name: str,
    vcpus: int = typer.Option(..., "--vcpus"),
    memory: str = typer.Option(..., "--memory", help="e.g. 512M, 2G"),
    disk: str = typer.Option(..., "--disk", help="OS disk, e.g. 2G"),
    family: str | None = typer.Option(None, "--family"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Define a size of your own."""
    size = client().post("/sizes", {"name": name, "vcpus": vcpus, "memory": memory, "disk": disk, "family": family})
    if fmt is output.Format.json:
        output.emit_json(size)
    else:
        output.console.print(
            f"size {size['name']}: {size['vcpus']} vCPU, {output.mib(size['memory_mib'])} memory, "
            f"{output.nbytes(size['disk_bytes'])} disk"
        )


@size_app.command("delete")
def delete_size(name: str) -> None:
    """Delete a size of your own (not while VMs use it)."""
    client().delete(f"/sizes/{name}")
    output.console.print(f"deleted size {name}")


IMAGE_COLUMNS = [
    ("NAME", lambda i: i["name"]),
    ("FORMAT", lambda i: i["format"]),
    ("VIRTUAL", lambda i: output.nbytes(i["virtual_size"])),
    ("FILE", lambda i: output.nbytes(i["file_size"])),
    ("BOOT", lambda i: "kernel" if i["kernel_file"] else "disk"),
    ("CLOUD-INIT", lambda i: "yes" if i["cloud_init"] else "no"),
    ("SHA256", lambda i: i["sha256"][:16]),
]


def _show_image(image: dict[str, Any], fmt: output.Format) -> None:
    if fmt is output.Format.json:
        output.emit_json(image)
    else:
        output.details([(k.replace("_", " "), v) for k, v in image.items()])


@image_app.command("list")
def list_images(fmt: output.Format = OutputOpt) -> None:
    """List images."""
    images = client().get("/images")
    if fmt is output.Format.json:
        output.emit_json(images)
    else:
        output.table(images, IMAGE_COLUMNS)


@image_app.command("show")
def show_image(name: str, fmt: output.Format = OutputOpt) -> None:
    """Show one image."""
    _show_image(client().get(f"/images/{name}"), fmt)


@image_app.command("import")
def import_image(
    name: str,
    disk: Path = typer.Option(..., "--disk", help="qcow2 or raw disk file"),
    kernel: Path | None = typer.Option(None, "--kernel", help="kernel for direct boot"),
    initrd: Path | None = typer.Option(None, "--initrd"),
    cmdline: str | None = typer.Option(None, "--cmdline", help="kernel command line"),
    ready_marker: str | None = typer.Option(None, "--ready-marker", help="console line that means 'ready'"),
    cloud_init: bool = typer.Option(False, "--cloud-init", help="give VMs a NoCloud seed"),
    sha256: str | None = typer.Option(None, "--sha256", help="refuse the file unless it has this checksum"),
    description: str = typer.Option("", "--description"),
    no_wait: bool = typer.Option(False, "--no-wait"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Import a disk (and optional kernel + initrd) into the image store, checked and checksummed."""

    def absolute(path: Path | None) -> str | None:
        return None if path is None else str(path.resolve())

    api = client()
    operation = api.post(
        "/images",
        {
            "name": name,
            "disk": absolute(disk),
            "kernel": absolute(kernel),
            "initrd": absolute(initrd),
            "cmdline": cmdline,
            "ready_marker": ready_marker,
            "cloud_init": cloud_init,
            "sha256": sha256,
            "description": description,
        },
    )
    finish(api, operation, f"importing {name}", no_wait, fmt, show=lambda: _show_image(api.get(f"/images/{name}"), fmt))


@image_app.command("upload")
def upload_image(
    file: Path = typer.Argument(..., help="qcow2 or raw disk file on this machine"),
    name: str = typer.Option(..., "--name", help="the image's name"),
    public: bool = typer.Option(False, "--public", help="for everyone (the admin); else the project's own"),
    sha256: str | None = typer.Option(None, "--sha256", help="refuse the file unless it has this checksum"),
    cloud_init: bool = typer.Option(False, "--cloud-init", help="give VMs a NoCloud seed"),
    description: str = typer.Option("", "--description"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Upload a disk from this machine (the server need not see the file), checked and checksummed
    there; returns once the image is recorded. It is private to the project the CLI works in
    (``--project``), unless ``--public``."""
    try:
        size = file.stat().st_size
    except OSError as err:
        raise InvalidInput("file", f"cannot read {file}: {err.strerror}") from err
    image = client().upload(
        "/images/upload",
        _read(file, size),
        size,
        name=name,
        public=public or None,
        sha256=sha256,
        cloud_init=cloud_init,
        description=description,
    )
    _show_image(image, fmt)


def _read(file: Path, size: int) -> Iterator[bytes]:
    """The file in chunks, as httpx sends them, with a progress bar on a terminal."""
    try:
        with file.open("rb") as reader, output.byte_progress(f"uploading {file.name}", size) as advance:
            while chunk := reader.read(UPLOAD_CHUNK):
                advance(len(chunk))
                yield chunk
    except OSError as err:
        raise InvalidInput("file", f"cannot read {file}: {err.strerror}") from err


@image_app.command("build")
def build_image(
    recipe: str = typer.Argument(..., help="what to build: tiny"),
    name: str | None = typer.Option(None, "--name", help="image name (default: the recipe's)"),
    no_wait: bool = typer.Option(False, "--no-wait"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Build a built-in image from Debian packages (tiny: busybox, virtio, HTTP; boots in seconds)."""
    name = name or recipe
    api = client()
    operation = api.post("/images/build", {"recipe": recipe, "name": name})
    finish(api, operation, f"building {name}", no_wait, fmt, show=lambda: _show_image(api.get(f"/images/{name}"), fmt))


@image_app.command("delete")
def delete_image(name: str) -> None:
    """Delete an image no VM uses, from the store and from every host."""
    result = client().delete(f"/images/{name}")
    output.console.print(f"deleted image {name}")
    if result and result["unreachable_hosts"]:
        output.err_console.print(
            f"note: hosts not reached (their copies remain): {', '.join(result['unreachable_hosts'])}"
        )
