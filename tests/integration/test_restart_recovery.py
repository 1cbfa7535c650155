"""A real `flexvm serve` killed with SIGKILL in the middle of creating a real guest: the next server
to start resumes the create where it stood and finishes it — a running VM and a succeeded
operation, never a rollback — and no domain is ever defined twice.

The kill comes at a named moment (``FLEXVM_CRASH_AT``: the server sends itself SIGKILL there, so
the moment is exact), and at a moment of the test's choosing while the guest boots.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers import FlexvmServer, domains, import_tiny_copy, pool_volumes, unique, wait_for


def resumed_create(crashy: FlexvmServer, operation_id: str, name: str) -> dict:  # type: ignore[type-arg]
    """Start the server again; the create must finish running, with the record to match."""
    crashy.env_extra.pop("FLEXVM_CRASH_AT", None)
    crashy.start()
    done = crashy.wait_operation(operation_id)
    assert done["status"] == "succeeded", (done["error"], crashy.log_tail())
    with crashy.api() as api:
        vm = api.get(f"/vms/{name}").json()
    assert (vm["provisioning_state"], vm["power_state"]) == ("succeeded", "running")
    assert [d for d in domains() if d == name] == [name]  # exactly one guest of that name
    assert done["result"]["resumed"], "the operation says which server resumed it"
    return done


def remove(crashy: FlexvmServer, name: str, image: str) -> None:
    with crashy.api() as api:
        op = api.delete(f"/vms/{name}").json()
        assert crashy.wait_operation(op["id"])["status"] == "succeeded"
        api.delete(f"/images/{image}")
    assert name not in domains()
    assert not {v for v in pool_volumes("flexvm-instances") if v.startswith(name)}


@pytest.mark.parametrize(
    "moment", ["os-disk:acted", "define:acted", "start:acted", "wait-ready:started"], ids=lambda m: m.replace(":", "-")
)
def test_a_server_killed_at_a_step_of_create_is_resumed_and_the_vm_runs(
    tmp_path: Path, server: FlexvmServer, tiny: str, run_prefix: str, moment: str
) -> None:
    crashy = FlexvmServer(tmp_path / "crashy", {"FLEXVM_READY_TIMEOUT": "90"})
    crashy.start()
    image = f"{run_prefix}-crash-{moment.split(':')[0]}"
    name = unique(run_prefix)
    try:
        import_tiny_copy(server, crashy, tiny, image)
        crashy.stop()
        crashy.env_extra["FLEXVM_CRASH_AT"] = f"vm.create:{moment}"
        crashy.start()
        with crashy.api() as api:
            operation_id = api.post("/vms", json={"name": name, "size": "Standard_B1ls", "image": image}).json()["id"]
        assert crashy.proc is not None
        crashy.proc.wait(timeout=60)
        assert crashy.proc.returncode == -signal.SIGKILL, crashy.log_tail()
        done = resumed_create(crashy, operation_id, name)
        interrupted = next(s for s in done["steps"] if s["name"] == moment.split(":")[0])
        assert interrupted["attempts"] == 2, done["steps"]  # the interrupted step ran again, checked first
        remove(crashy, name, image)
    finally:
        crashy.stop()


def test_a_server_killed_while_the_guest_boots_is_resumed_and_the_vm_runs(
    tmp_path: Path, server: FlexvmServer, tiny: str, run_prefix: str
) -> None:
    crashy = FlexvmServer(tmp_path / "crashy", {"FLEXVM_READY_TIMEOUT": "90"})
    crashy.start()
    image = f"{run_prefix}-crash-boot"
    name = unique(run_prefix)
    try:
        import_tiny_copy(server, crashy, tiny, image)
        with crashy.api() as api:
            operation_id = api.post("/vms", json={"name": name, "size": "Standard_B1ls", "image": image}).json()["id"]

            def booting() -> bool:
                op = api.get(f"/operations/{operation_id}").json()
                return any(s["name"] == "wait-ready" and s["status"] == "running" for s in op["steps"])

            wait_for(booting, 60, "the create to wait for the guest", interval=0.05)
        crashy.kill()
        assert name in domains(), "the guest went on booting without a server"
        resumed_create(crashy, operation_id, name)
        remove(crashy, name, image)
    finally:
        crashy.stop()
