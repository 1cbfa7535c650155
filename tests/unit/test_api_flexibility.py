"""The flexibility routes of the REST API: resize, migrate, drain, undrain, rebalance, snapshots.

Pins: with dry_run a resize, migrate, drain or rebalance answers 200 with the plan and changes
nothing; without it, 202 with the operation and its Location, which reaches succeeded and the
change shows in GET; undrain answers the host; snapshot routes create, list, revert and delete;
every refusal is Azure's shape {"error": {"code", "message", "details"}} with the status of its
class and the field named for bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.platform import Platform
from tests.unit.api_helpers import error_of, finished
from tests.unit.flex_helpers import Gate, guest, make_vm, quick_image
from tests.unit.pool_helpers import add_host, pool_settings


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def image(platform: Platform, small_disk: Path) -> str:
    return quick_image(platform, small_disk)


@pytest.fixture
def a(platform: Platform, image: str) -> FakeDriver:
    """Hosts a and b; web1 (Standard_B1s) runs on a."""
    driver = add_host(platform, "a")
    add_host(platform, "b")
    make_vm(platform, "web1")
    return driver


def vm(api: TestClient, name: str = "web1") -> dict[str, Any]:
    response = api.get(f"/v1/vms/{name}")
    assert response.status_code == 200, response.text
    return response.json()


# --- resize --------------------------------------------------------------------------------------


def test_resize_dry_run_is_the_plan_and_without_it_the_operation(api: TestClient, a: FakeDriver) -> None:
    response = api.post("/v1/vms/web1/resize", json={"size": "Standard_B2s", "dry_run": True})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert (plan["vm"], plan["current"], plan["target"], plan["path"]) == (
        "web1",
        "Standard_B1s",
        "Standard_B2s",
        "hot",
    )
    assert (plan["host"], plan["destination"]) == ("a", None) and plan["steps"]
    assert (vm(api)["size"], vm(api)["active_operation_id"]) == ("Standard_B1s", None)
    operation = finished(api, api.post("/v1/vms/web1/resize", json={"size": "Standard_B2s"}))
    assert (operation["kind"], operation["result"]["path"]) == ("vm.resize", "hot")
    record = vm(api)
    assert (record["size"], record["vcpus"], record["memory_mib"]) == ("Standard_B2s", 2, 4096)


def test_resize_refusals_have_the_error_shape(api: TestClient, a: FakeDriver) -> None:
    error_of(api.post("/v1/vms/web1/resize", json={"size": "Standard_Nope"}), 400, "InvalidInput", "size")
    error_of(api.post("/v1/vms/web1/resize", json={"size": "Standard_B1s"}), 400, "InvalidInput", "size")
    error_of(api.post("/v1/vms/web1/resize", json={"size": "Standard_B2s", "nope": 1}), 400, "InvalidInput", "nope")
    error_of(api.post("/v1/vms/web1/resize", json={}), 400, "InvalidInput", "size")
    error_of(api.post("/v1/vms/nope/resize", json={"size": "Standard_B2s"}), 404, "NotFound")
    error_of(api.post("/v1/vms/-bad/resize", json={"size": "Standard_B2s"}), 400, "InvalidInput", "name")
    big = error_of(
        api.post("/v1/vms/web1/resize", json={"size": "Standard_B2ms", "dry_run": True}), 409, "InsufficientCapacity"
    )
    assert set(big["details"]["hosts"]) == {"a", "b"}
    finished(api, api.post("/v1/vms", json={"name": "web2", "size": "Standard_B2s", "image": "img"}))
    tcg = error_of(api.post("/v1/vms/web2/resize", json={"size": "Standard_B1ms"}), 409, "InvalidState")
    assert "TCG" in tcg["message"] and tcg["details"]["remedy"] == {"option": "allow_restart"}
    assert "allow_restart: true" in tcg["details"]["hint"], "the API names its own request field"
    assert "--" not in tcg["message"] + tcg["details"]["hint"], "and no CLI flag"
    assert vm(api)["size"] == "Standard_B1s" and vm(api, "web2")["size"] == "Standard_B2s"


def test_a_shrink_into_used_memory_is_409_conflict_until_forced(api: TestClient, a: FakeDriver) -> None:
    g = guest(a, "web1")
    assert g is not None
    g.used_mib = 900  # of 1 GiB; Standard_B1ls leaves 512 MiB
    body = {"size": "Standard_B1ls", "dry_run": True}
    refused = error_of(api.post("/v1/vms/web1/resize", json=body), 409, "Conflict")
    assert refused["details"] == {
        "used_kib": 900 * 1024,
        "target_mib": 512,
        "remedy": {"option": "force"},
        "hint": "send force: true to shrink it anyway",
    }
    plan = api.post("/v1/vms/web1/resize", json={**body, "force": True})
    assert plan.status_code == 200 and any("(forced)" in w for w in plan.json()["warnings"])
    finished(api, api.post("/v1/vms/web1/resize", json={"size": "Standard_B1ls", "force": True}))
    assert vm(api)["memory_mib"] == 512


# --- migrate -------------------------------------------------------------------------------------


def test_migrate_dry_run_is_the_plan_and_without_it_the_vm_moves(api: TestClient, a: FakeDriver) -> None:
    response = api.post("/v1/vms/web1/migrate", json={"to": "b", "dry_run": True})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert (plan["vm"], plan["source"], plan["destination"], plan["mode"]) == ("web1", "a", "b", "live")
    assert plan["rejected"] == {} and plan["notes"] == [] and plan["estimate_seconds"] > 0
    assert vm(api)["host"] == "a"
    cold = api.post("/v1/vms/web1/migrate", json={"dry_run": True, "cold": True}).json()
    assert (cold["destination"], cold["mode"]) == ("b", "cold")
    operation = finished(api, api.post("/v1/vms/web1/migrate", json={"to": "b"}))
    assert operation["kind"] == "vm.migrate-live" and operation["result"]["to"] == "b"
    assert (vm(api)["host"], vm(api)["moving_to"]) == ("b", None)


def test_migrate_refusals_have_the_error_shape(
    api: TestClient, platform: Platform, a: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    error_of(api.post("/v1/vms/web1/migrate", json={"to": "a"}), 400, "InvalidInput", "to")
    error_of(api.post("/v1/vms/web1/migrate", json={"to": "bad name"}), 400, "InvalidInput", "to")
    error_of(api.post("/v1/vms/web1/migrate", json={"to": "nowhere"}), 404, "NotFound")
    error_of(api.post("/v1/vms/web1/migrate", json={"cold": "yes please"}), 400, "InvalidInput", "cold")
    gate = Gate(monkeypatch, a, "migrate")
    first = api.post("/v1/vms/web1/migrate", json={"to": "b"})
    try:
        gate.wait_reached()
        busy = error_of(api.post("/v1/vms/web1/migrate", json={"to": "b"}), 409, "OperationInProgress")
        error_of(api.post("/v1/vms/web1/resize", json={"size": "Standard_B2s"}), 409, "OperationInProgress")
    finally:
        gate.open()
    assert busy["details"]["operation_id"] == first.json()["id"]
    finished(api, first)


def test_a_live_move_of_a_vm_with_snapshots_names_the_cold_field(api: TestClient, a: FakeDriver) -> None:
    finished(api, api.post("/v1/vms/web1/snapshots", json={"name": "s1"}))
    error = error_of(api.post("/v1/vms/web1/migrate", json={"to": "b"}), 409, "InvalidState")
    assert error["details"]["snapshots"] == ["s1"] and error["details"]["remedy"] == {"option": "cold"}
    assert error["details"]["hint"] == "send cold: true to move it stopped"
    assert "--cold" not in error["message"]


# --- drain, undrain, rebalance -------------------------------------------------------------------


def test_drain_dry_run_then_drain_then_undrain(api: TestClient, a: FakeDriver) -> None:
    response = api.post("/v1/hosts/a/drain", json={"dry_run": True, "parallel": 2})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert (plan["host"], plan["parallel"], plan["stays"]) == ("a", 2, {})
    assert [(m["vm"], m["destination"], m["mode"]) for m in plan["moves"]] == [("web1", "b", "live")]
    assert api.get("/v1/hosts/a").json()["state"] == "up"
    response = api.post("/v1/hosts/a/drain", json={})
    assert api.get("/v1/hosts/a").json()["state"] == "maintenance"
    operation = finished(api, response)
    assert operation["kind"] == "host.drain" and list(operation["result"]["moved"]) == ["web1"]
    assert vm(api)["host"] == "b" and api.get("/v1/hosts/a").json()["vms"] == []
    undrained = api.post("/v1/hosts/a/undrain")
    assert undrained.status_code == 200, undrained.text
    assert (undrained.json()["name"], undrained.json()["state"]) == ("a", "up")
    error_of(api.post("/v1/hosts/a/undrain"), 409, "InvalidState")


def test_drain_refusals_have_the_error_shape(api: TestClient, a: FakeDriver) -> None:
    error_of(api.post("/v1/hosts/a/drain", json={"parallel": 0}), 400, "InvalidInput", "parallel")
    error_of(api.post("/v1/hosts/a/drain", json={"parallel": 9, "dry_run": True}), 400, "InvalidInput", "parallel")
    error_of(api.post("/v1/hosts/a/drain", json={"parallel": "2"}), 400, "InvalidInput", "parallel")
    error_of(api.post("/v1/hosts/nowhere/drain", json={}), 404, "NotFound")
    error_of(api.post("/v1/hosts/nowhere/undrain"), 404, "NotFound")
    assert api.get("/v1/hosts/a").json()["state"] == "up"


def test_rebalance_dry_run_is_the_plan_and_without_it_the_vms_move(
    api: TestClient, platform: Platform, a: FakeDriver
) -> None:
    for name in ("m1", "m2"):
        make_vm(platform, name, "Standard_B1ms")  # a: 5 of 7.5 GiB used, b: none
    response = api.post("/v1/pool/rebalance", json={"dry_run": True})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["host"] is None and len(plan["moves"]) == 1
    assert plan["spread_after"] < plan["spread_before"]
    operation = finished(api, api.post("/v1/pool/rebalance", json={}))
    assert (operation["kind"], list(operation["result"]["moved"])) == ("pool.rebalance", [plan["moves"][0]["vm"]])
    assert vm(api, plan["moves"][0]["vm"])["host"] == "b"
    error_of(api.post("/v1/pool/rebalance", json={"threshold": 0.9}), 409, "InvalidState")
    error_of(api.post("/v1/pool/rebalance", json={"threshold": 2, "dry_run": True}), 400, "InvalidInput", "threshold")
    error_of(api.post("/v1/pool/rebalance", json={"max_moves": 0, "dry_run": True}), 400, "InvalidInput", "max_moves")


# --- snapshots -----------------------------------------------------------------------------------


def test_snapshot_routes_create_list_revert_and_delete(api: TestClient, a: FakeDriver) -> None:
    operation = finished(api, api.post("/v1/vms/web1/snapshots", json={"name": "s1"}))
    assert (operation["kind"], operation["result"]) == ("vm.snapshot", {"snapshot": "s1"})
    assert api.get("/v1/vms/web1/snapshots").json() == ["s1"]
    reverted = finished(api, api.post("/v1/vms/web1/snapshots/s1/revert"))
    assert reverted["result"] == {"snapshot": "s1", "running": True}
    finished(api, api.delete("/v1/vms/web1/snapshots/s1"))
    assert api.get("/v1/vms/web1/snapshots").json() == []
    # A snapshot it no longer has is refused with the request, before any operation.
    gone = error_of(api.post("/v1/vms/web1/snapshots/s1/revert"), 404, "NotFound")
    assert gone["message"] == "snapshot 's1' of VM 'web1' not found"


def test_snapshot_refusals_have_the_error_shape(api: TestClient, a: FakeDriver) -> None:
    error_of(api.post("/v1/vms/web1/snapshots", json={"name": "bad name"}), 400, "InvalidInput", "snapshot")
    error_of(api.post("/v1/vms/web1/snapshots/-x/revert"), 400, "InvalidInput", "snapshot")
    error_of(api.delete("/v1/vms/web1/snapshots/-x"), 400, "InvalidInput", "snapshot")
    error_of(api.post("/v1/vms/nope/snapshots", json={}), 404, "NotFound")
    error_of(api.get("/v1/vms/nope/snapshots"), 404, "NotFound")
    finished(api, api.post("/v1/vms/web1/deallocate"))
    refused = error_of(api.post("/v1/vms/web1/snapshots", json={"name": "s1"}), 409, "InvalidState")
    assert "deallocated" in refused["message"]
    assert api.get("/v1/vms/web1/snapshots").json() == []
