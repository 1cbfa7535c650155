"""Images that run cloud-init get a NoCloud seed: a 'cidata' disc with the VM's name and user data."""

from __future__ import annotations

import io
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pycdlib

from tests.helpers import FlexvmServer, import_tiny_copy, pool_volumes, virsh


def read_iso_file(iso: Path, name: str) -> str:
    disc = pycdlib.PyCdlib()
    disc.open(str(iso))
    try:
        out = io.BytesIO()
        disc.get_file_from_iso_fp(out, rr_path=f"/{name}")
        return out.getvalue().decode()
    finally:
        disc.close()


def test_cloud_init_image_gets_a_seed_with_user_data(
    server: FlexvmServer, tiny: str, vm_name: str, tmp_path: Path, run_prefix: str
) -> None:
    cloudy = f"{run_prefix}-cloudy"
    import_tiny_copy(server, server, tiny, cloudy, "--cloud-init")
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nruncmd:\n  - echo hello from user data\n")
    server.ok("vm", "create", vm_name, "--size", "Standard_B1ls", "--image", cloudy, "--user-data", str(user_data))

    root = ET.fromstring(virsh("dumpxml", vm_name))
    cdrom = root.find("devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("readonly") is not None
    assert cdrom.find("source").get("file", "").endswith(f"{vm_name}-seed.iso")  # type: ignore[union-attr]

    iso = tmp_path / "seed.iso"
    subprocess.run(
        [
            "virsh",
            "-c",
            "qemu:///system",
            "vol-download",
            "--pool",
            "flexvm-instances",
            f"{vm_name}-seed.iso",
            str(iso),
        ],
        check=True,
        capture_output=True,
    )
    disc = pycdlib.PyCdlib()
    disc.open(str(iso))
    assert disc.pvd.volume_identifier.decode().strip() == "cidata"
    disc.close()
    assert read_iso_file(iso, "user-data") == user_data.read_text()
    meta = read_iso_file(iso, "meta-data")
    assert vm_name in meta and server.ok("vm", "show", vm_name, "-o", "json").json()["id"] in meta

    # User data for an image without cloud-init is refused rather than silently dropped.
    result = server.cli(
        "vm", "create", f"{vm_name}-x", "--size", "Standard_B1ls", "--image", tiny, "--user-data", str(user_data)
    )
    assert result.returncode == 1 and "does not run cloud-init" in result.stderr

    server.ok("vm", "delete", vm_name)
    assert f"{vm_name}-seed.iso" not in pool_volumes("flexvm-instances")
    server.ok("image", "delete", cloudy)
