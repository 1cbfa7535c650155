"""Killing the server in the middle of a create never leaves a domain or disk that nothing records."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FlexvmServer, domains, import_tiny_copy, pool_volumes, unique, wait_for


@pytest.mark.parametrize("kill_when", ["define", "start"])
def test_server_killed_during_create_is_reconciled_on_restart(
    tmp_path: Path, server: FlexvmServer, tiny: str, run_prefix: str, kill_when: str
) -> None:
    crashy = FlexvmServer(tmp_path / "crashy")
    crashy.start()
    image = f"{run_prefix}-crash"
    name = unique(run_prefix)
    try:
        import_tiny_copy(server, crashy, tiny, image)
        with crashy.api() as api:
            operation_id = api.post("/vms", json={"name": name, "size": "Standard_B1ls", "image": image}).json()["id"]

            def step_done() -> bool:
                op = api.get(f"/operations/{operation_id}").json()
                return any(s["name"] == kill_when and s["status"] == "done" for s in op["steps"])

            wait_for(step_done, 60, f"the create to finish its '{kill_when}' step", interval=0.05)
        crashy.kill()
        assert name in domains(), "the crash left a domain behind for the restart to deal with"

        crashy.start()
        with crashy.api() as api:
            op = api.get(f"/operations/{operation_id}").json()
            assert op["status"] in ("succeeded", "failed")
            assert "interrupted by a server restart" in op["message"]
            vm = api.get(f"/vms/{name}")
            if op["status"] == "failed":
                # Rolled back: nothing on the host, no record, no claim.
                assert "rolled back" in op["message"]
                assert vm.status_code == 404
                assert name not in domains()
                assert not {v for v in pool_volumes("flexvm-instances") if v.startswith(name)}
                assert api.get("/hosts/local").json()["vcpus_allocated"] == 0
            else:
                # Finished: the guest had become ready, and the records say so.
                assert kill_when == "start", "a guest not yet started cannot have become ready"
                assert vm.json()["power_state"] == "running" and vm.json()["provisioning_state"] == "succeeded"
                assert name in domains()
            if kill_when == "define":
                assert op["status"] == "failed", "a defined but never started guest is rolled back"
            # Either way: a domain exists exactly when a record owns it.
            recorded = {v["name"] for v in api.get("/vms").json()}
            assert (name in domains()) == (name in recorded)
            if name in recorded:
                op = api.delete(f"/vms/{name}").json()
                assert crashy.wait_operation(op["id"])["status"] == "succeeded"
            api.delete(f"/images/{image}")
    finally:
        crashy.stop()
    assert name not in domains()
