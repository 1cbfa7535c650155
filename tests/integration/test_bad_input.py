"""What a user gets wrong, and what breaks under them: one clear line, exit 1, nothing half-made."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import FlexvmServer, domains, import_tiny_copy, pool_volumes, unique

HOSTILE_NAMES = ["a'/><x", "$(id)", "../", "-lead", "x" * 65, "a b"]


def refused(server: FlexvmServer, *args: str) -> str:
    """Run a CLI command that must fail cleanly; return its error line."""
    result = server.cli(*args)
    assert result.returncode == 1, f"expected a refusal, got {result.returncode}: {result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    return result.stderr


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_vm_names_are_refused_at_the_edge(server: FlexvmServer, tiny: str, name: str) -> None:
    before = domains()
    message = refused(server, "vm", "create", "--size", "Standard_B1ls", "--image", tiny, "--", name)
    assert "letters, digits and hyphens" in message
    assert domains() == before
    assert server.ok("vm", "list", "-o", "json").json() == [] or all(
        vm["name"] != name for vm in server.ok("vm", "list", "-o", "json").json()
    )


def test_unknown_size_image_and_duplicates(server: FlexvmServer, tiny: str, vm_name: str) -> None:
    assert "Standard_B1s" in refused(server, "vm", "create", vm_name, "--size", "Standard_Nope", "--image", tiny)
    assert "unknown image 'nope'" in refused(
        server, "vm", "create", vm_name, "--size", "Standard_B1ls", "--image", "nope"
    )
    server.ok("vm", "create", vm_name, "--size", "Standard_B1ls", "--image", tiny)
    assert "already exists" in refused(server, "vm", "create", vm_name, "--size", "Standard_B1ls", "--image", tiny)
    # Disks only grow, and the message says why.
    assert "shrinking would destroy" in refused(server, "vm", "disk", "resize", vm_name, "--size", "1G")
    server.ok("vm", "delete", vm_name)


def test_a_size_no_host_can_hold_says_what_is_free(server: FlexvmServer, tiny: str, vm_name: str) -> None:
    size = f"{vm_name}-huge"
    server.ok("size", "create", size, "--vcpus", "256", "--memory", "4T", "--disk", "2G")
    message = refused(server, "vm", "create", vm_name, "--size", size, "--image", tiny)
    assert "larger than this host can ever hold" in message
    assert "free" in message and "vCPUs" in message
    assert vm_name not in domains()
    assert server.ok("vm", "list", "-o", "json").json() == [] or vm_name not in {
        vm["name"] for vm in server.ok("vm", "list", "-o", "json").json()
    }
    server.ok("size", "delete", size)


def test_corrupt_and_truncated_images_are_refused(server: FlexvmServer, tmp_path: Path, run_prefix: str) -> None:
    good = tmp_path / "good.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(good), "256M"], check=True)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.qcow2"
    truncated.write_bytes(data[: len(data) // 2])
    name = f"{run_prefix}-bad"
    message = refused(server, "image", "import", name, "--disk", str(truncated))
    assert "truncated.qcow2" in message
    assert name not in {i["name"] for i in server.ok("image", "list", "-o", "json").json()}
    assert "sha256" in refused(server, "image", "import", name, "--disk", str(good), "--sha256", "0" * 64).lower()
    assert not list((server.home / "images").glob(f"{name}*")), "a refused import leaves no file in the store"


def test_guest_that_never_becomes_ready_fails_and_stays_inspectable(
    tmp_path: Path, tiny: str, server: FlexvmServer, run_prefix: str
) -> None:
    """An image whose readiness line never comes: the create fails after the timeout, the VM remains
    (running, provisioning failed) so its console can be read, and a delete removes everything."""
    mute = f"{run_prefix}-mute"
    quick = FlexvmServer(tmp_path / "quick", {"FLEXVM_READY_TIMEOUT": "12"})
    # Same libvirt host, own database and a short ready timeout; the tiny image's files under a
    # marker the guest never prints.
    quick.start()
    try:
        import_tiny_copy(server, quick, tiny, mute, ready_marker="this line is never printed")
        name = unique(run_prefix)
        result = quick.cli("vm", "create", name, "--size", "Standard_B1ls", "--image", mute)
        assert result.returncode == 1
        assert "did not report ready within 12 s" in result.stderr
        vm = quick.ok("vm", "show", name, "-o", "json").json()
        assert vm["provisioning_state"] == "failed" and vm["power_state"] == "running"
        assert "flexvm: ready" in quick.ok("vm", "console", name).stdout, "the guest did boot; only the marker differed"
        assert name in domains()
        quick.ok("vm", "delete", name)
        assert name not in domains()
        assert not {v for v in pool_volumes("flexvm-instances") if v.startswith(name)}
        quick.ok("image", "delete", mute)
    finally:
        quick.stop()


def test_libvirt_unreachable_gives_a_clear_message(tmp_path: Path) -> None:
    dead = FlexvmServer(tmp_path / "dead", {"FLEXVM_LIBVIRT_URI": "qemu+tcp://127.0.0.1:1/system"})
    dead.start()
    try:
        host = dead.ok("host", "show", "local", "-o", "json").json()
        assert host["state"] == "down"
        assert "Is libvirtd running?" in host["state_reason"]
        result = dead.cli("vm", "create", "x1", "--size", "Standard_B1ls", "--image", "tiny")
        assert result.returncode == 1 and "Traceback" not in result.stderr
    finally:
        dead.stop()


def test_cli_without_a_server_says_so(tmp_path: Path) -> None:
    nobody = FlexvmServer(tmp_path / "nobody")
    result = nobody.cli("vm", "list")
    assert result.returncode == 1
    assert "cannot reach the flexvm server" in result.stderr and "Traceback" not in result.stderr
