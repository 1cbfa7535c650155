"""Real guests under libvirt (TCG where KVM cannot run them), through a real `flexvm serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FlexvmServer, domains, pool_volumes, unique


@pytest.fixture(scope="session")
def run_prefix() -> str:
    """Every VM and image the integration tests make carries this, so cleanup can find them all."""
    return unique("it")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, run_prefix: str) -> Iterator[FlexvmServer]:
    srv = FlexvmServer(tmp_path_factory.mktemp("flexvm-home"), {"FLEXVM_READY_TIMEOUT": "90"})
    srv.start()
    yield srv
    # Delete whatever VMs the tests left, then stop the server; finally check libvirt is clean.
    with srv.api() as api:
        for vm in api.get("/vms").json():
            op = api.delete(f"/vms/{vm['name']}").json()
            if "id" in op:
                srv.wait_operation(op["id"])
        for image in api.get("/images").json():
            api.delete(f"/images/{image['name']}")
    srv.stop()
    leftovers = {d for d in domains() if d.startswith(run_prefix)}
    leftovers |= {
        v for v in pool_volumes("flexvm-instances") | pool_volumes("flexvm-images") if v.startswith(run_prefix)
    }
    assert not leftovers, f"integration tests left these behind in libvirt: {sorted(leftovers)}"


@pytest.fixture(scope="session")
def tiny(server: FlexvmServer, run_prefix: str) -> str:
    """The built-in tiny image, built through the CLI under a name unique to this run."""
    name = f"{run_prefix}-tiny"
    server.ok("image", "build", "tiny", "--name", name)
    return name


@pytest.fixture
def vm_name(run_prefix: str) -> str:
    return unique(run_prefix)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"
