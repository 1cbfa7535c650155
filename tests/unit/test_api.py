"""The REST API through FastAPI's TestClient, on the fake host.

Pins: bearer-token auth (and the two open paths), 202 + Location + operation for every change and
polling it to the end, response shapes, Azure's error shape with the HTTP status of each error
(400 naming the field, 404, 409), sizes with units, and the public surface: every (method, path).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flexvm.api.app import create_app
from flexvm.drivers.fake import FakeDriver
from flexvm.model.units import GIB
from flexvm.platform import Platform

VM_KEYS = {
    "id", "name", "size", "image", "vcpus", "memory_mib", "disk_bytes", "provisioning_state", "power_state",
    "host", "disk_host", "created_at", "ready_at", "boot_seconds", "active_operation_id", "error", "disks", "nics",
    "availability_set", "max_size", "max_vcpus", "max_memory_mib", "moving_to", "project",
    "storage", "ha", "ha_priority", "unavailable",
}  # fmt: skip
OPERATION_KEYS = {
    "id", "kind", "target_kind", "target_name", "status", "progress", "message", "created_at", "started_at",
    "finished_at", "duration_seconds", "steps", "error", "result", "owner", "claims", "cancel_requested",
    "project",
}  # fmt: skip

PUBLIC_SURFACE = {
    ("GET", "/v1/vms"),
    ("POST", "/v1/vms"),
    ("GET", "/v1/vms/{name}"),
    ("DELETE", "/v1/vms/{name}"),
    ("PATCH", "/v1/vms/{name}"),
    ("POST", "/v1/vms/{name}/start"),
    ("POST", "/v1/vms/{name}/stop"),
    ("POST", "/v1/vms/{name}/restart"),
    ("POST", "/v1/vms/{name}/deallocate"),
    ("POST", "/v1/vms/{name}/disk/resize"),
    ("GET", "/v1/vms/{name}/console"),
    ("POST", "/v1/vms/{name}/resize"),
    ("POST", "/v1/vms/{name}/migrate"),
    ("POST", "/v1/vms/{name}/snapshots"),
    ("GET", "/v1/vms/{name}/snapshots"),
    ("POST", "/v1/vms/{name}/snapshots/{snapshot}/revert"),
    ("DELETE", "/v1/vms/{name}/snapshots/{snapshot}"),
    ("POST", "/v1/vms/{name}/capture"),
    ("POST", "/v1/vms/{name}/export"),
    ("POST", "/v1/vms/import"),
    ("GET", "/v1/vms/{name}/metrics"),
    ("GET", "/v1/hosts/{name}/metrics"),
    ("GET", "/v1/metrics/latest"),
    ("GET", "/v1/advisor"),
    ("POST", "/v1/hosts/{name}/drain"),
    ("POST", "/v1/hosts/{name}/undrain"),
    ("POST", "/v1/hosts/{name}/fence"),
    ("POST", "/v1/hosts/{name}/fence-confirm"),
    ("POST", "/v1/pool/rebalance"),
    ("POST", "/v1/maintenance/plan"),
    ("POST", "/v1/maintenance/runs"),
    ("GET", "/v1/maintenance"),
    ("POST", "/v1/maintenance/pause"),
    ("POST", "/v1/maintenance/resume"),
    ("POST", "/v1/maintenance/cancel"),
    ("GET", "/v1/sizes"),
    ("POST", "/v1/sizes"),
    ("DELETE", "/v1/sizes/{name}"),
    ("GET", "/v1/images"),
    ("POST", "/v1/images"),
    ("POST", "/v1/images/build"),
    ("POST", "/v1/images/upload"),
    ("GET", "/v1/images/{name}"),
    ("DELETE", "/v1/images/{name}"),
    ("GET", "/v1/hosts"),
    ("POST", "/v1/hosts"),
    ("GET", "/v1/hosts/{name}"),
    ("PATCH", "/v1/hosts/{name}"),
    ("DELETE", "/v1/hosts/{name}"),
    ("POST", "/v1/hosts/{name}/probe"),
    ("GET", "/v1/networks"),
    ("POST", "/v1/networks"),
    ("GET", "/v1/networks/{name}"),
    ("DELETE", "/v1/networks/{name}"),
    ("GET", "/v1/storage"),
    ("POST", "/v1/storage"),
    ("GET", "/v1/storage/{name}"),
    ("DELETE", "/v1/storage/{name}"),
    ("GET", "/metrics"),
    ("GET", "/v1/availability-sets"),
    ("POST", "/v1/availability-sets"),
    ("GET", "/v1/availability-sets/{name}"),
    ("DELETE", "/v1/availability-sets/{name}"),
    ("GET", "/v1/scalesets"),
    ("POST", "/v1/scalesets"),
    ("GET", "/v1/scalesets/{name}"),
    ("DELETE", "/v1/scalesets/{name}"),
    ("POST", "/v1/scalesets/{name}/scale"),
    ("POST", "/v1/scalesets/{name}/update"),
    ("GET", "/v1/scalesets/{name}/instances"),
    ("PUT", "/v1/scalesets/{name}/autoscale"),
    ("DELETE", "/v1/scalesets/{name}/autoscale"),
    ("GET", "/v1/scalesets/{name}/autoscale/rules"),
    ("POST", "/v1/scalesets/{name}/autoscale/rules"),
    ("DELETE", "/v1/scalesets/{name}/autoscale/rules/{rule_id}"),
    ("GET", "/v1/scalesets/{name}/autoscale/history"),
    ("POST", "/v1/scalesets/{name}/autoscale/simulate"),
    ("GET", "/v1/capacity"),
    ("GET", "/v1/capacity/what-if"),
    ("GET", "/v1/capacity/failure"),
    ("GET", "/v1/operations"),
    ("GET", "/v1/operations/{operation_id}"),
    ("POST", "/v1/operations/{operation_id}/cancel"),
    ("GET", "/v1/servers"),
    ("GET", "/v1/projects"),
    ("POST", "/v1/projects"),
    ("GET", "/v1/projects/{name}"),
    ("PATCH", "/v1/projects/{name}"),
    ("DELETE", "/v1/projects/{name}"),
    ("GET", "/v1/me"),
    ("GET", "/v1/users"),
    ("POST", "/v1/users"),
    ("PATCH", "/v1/users/{name}"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{token_id}"),
    ("GET", "/v1/roles"),
    ("POST", "/v1/roles"),
    ("DELETE", "/v1/roles"),
    ("GET", "/v1/platform-roles"),
    ("POST", "/v1/platform-roles"),
    ("DELETE", "/v1/platform-roles"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/all"),
}


def poll(api: TestClient, location: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(location)
        assert response.status_code == 200, response.text
        operation = response.json()
        if operation["status"] in ("succeeded", "failed", "canceled"):
            return operation
        assert time.monotonic() < deadline, f"operation still {operation['status']}"
        time.sleep(0.01)


def accepted(response: Any) -> dict[str, Any]:
    """A 202 with the operation in the body and where to poll it in Location."""
    assert response.status_code == 202, response.text
    operation = response.json()
    assert set(operation) == OPERATION_KEYS
    assert response.headers["location"] == f"/v1/operations/{operation['id']}"
    assert operation["status"] in ("pending", "running", "succeeded")
    return operation


def finished(api: TestClient, response: Any) -> dict[str, Any]:
    operation = poll(api, response.headers["location"])
    assert operation["status"] == "succeeded", operation["error"]
    return operation


def make_vm(api: TestClient, name: str = "web1") -> dict[str, Any]:
    finished(api, api.post("/v1/vms", json={"name": name, "size": "Standard_B1s", "image": "img"}))
    return api.get(f"/v1/vms/{name}").json()


def encode_all(name: str) -> str:
    """Percent-encode every byte, so the client cannot normalise the path (e.g. drop '..')."""
    return "".join(f"%{byte:02X}" for byte in name.encode())


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


# --- auth ----------------------------------------------------------------------------------


@pytest.fixture
def anonymous(platform: Platform) -> Any:
    with TestClient(create_app(platform, "test-token")) as client:
        yield client


BAD_AUTH = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "test-token"},
    {"Authorization": "Basic test-token"},
]


@pytest.mark.parametrize("path", ["/v1/vms", "/v1/sizes", "/v1/operations", "/v1/hosts/local"])
def test_requests_without_the_right_token_are_refused(anonymous: TestClient, path: str) -> None:
    for headers in BAD_AUTH:
        error_of(anonymous.get(path, headers=headers), 401, "Unauthorized")
    assert anonymous.get(path, headers={"Authorization": "Bearer test-token"}).status_code == 200


def test_changes_without_a_token_are_refused_and_do_nothing(anonymous: TestClient, platform: Platform) -> None:
    response = anonymous.post("/v1/vms", json={"name": "web1", "size": "Standard_B1s", "image": "img"})
    error_of(response, 401, "Unauthorized")
    assert platform.vms.list() == []
    assert platform.runner.list() == []


def test_health_and_the_openapi_document_are_open(anonymous: TestClient) -> None:
    health = anonymous.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    document = anonymous.get("/openapi.json")
    assert document.status_code == 200
    assert "/v1/vms" in document.json()["paths"]


# --- the public surface --------------------------------------------------------------------


def test_the_public_surface_is_pinned(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    routes = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    assert routes == PUBLIC_SURFACE


def test_openapi_lists_the_vm_paths(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    vm_paths = {path for path in paths if path.startswith("/v1/vms")}
    assert {"/v1/vms", "/v1/vms/{name}", "/v1/vms/{name}/stop", "/v1/vms/{name}/console"} <= vm_paths
    assert set(paths["/v1/vms"]) == {"get", "post"}


# --- VMs -----------------------------------------------------------------------------------


def test_create_answers_202_with_the_operation_and_polling_reaches_succeeded(api: TestClient, image: str) -> None:
    response = api.post("/v1/vms", json={"name": "web1", "size": "Standard_B1s", "image": "img"})
    operation = accepted(response)
    assert (operation["kind"], operation["target_kind"], operation["target_name"]) == ("vm.create", "vm", "web1")
    done = finished(api, response)
    assert done["id"] == operation["id"]
    assert done["progress"] == 100
    assert done["duration_seconds"] is not None
    assert [step["name"] for step in done["steps"]] == [
        "claim",
        "image",
        "os-disk",
        "define",
        "start",
        "booted",
        "wait-ready",
        "running",
    ]
    assert done["result"]["boot_seconds"] >= 0


def test_vm_shapes(api: TestClient, image: str) -> None:
    vm = make_vm(api)
    assert set(vm) == VM_KEYS
    assert (vm["name"], vm["size"], vm["image"], vm["host"]) == ("web1", "Standard_B1s", "img", "local")
    assert (vm["vcpus"], vm["memory_mib"], vm["disk_bytes"]) == (1, 1024, 4 * GIB)
    assert (vm["provisioning_state"], vm["power_state"]) == ("succeeded", "running")
    assert vm["disks"] == [{"name": "web1-os.qcow2", "role": "os", "size_bytes": 4 * GIB}]
    assert [set(nic) for nic in vm["nics"]] == [{"network", "mac", "ip"}]
    listed = api.get("/v1/vms")
    assert listed.status_code == 200
    assert listed.json() == [vm]


def test_stop_start_and_delete_are_operations(api: TestClient, fake_host: FakeDriver, image: str) -> None:
    make_vm(api)
    stop = api.post("/v1/vms/web1/stop")
    assert accepted(stop)["kind"] == "vm.stop"
    assert finished(api, stop)["result"] == {"forced": False}
    assert api.get("/v1/vms/web1").json()["power_state"] == "stopped"

    start = api.post("/v1/vms/web1/start")
    assert accepted(start)["kind"] == "vm.start"
    finished(api, start)
    assert api.get("/v1/vms/web1").json()["power_state"] == "running"

    forced = api.post("/v1/vms/web1/stop", json={"force": True})
    assert finished(api, forced)["result"] == {"forced": True}

    delete = api.delete("/v1/vms/web1")
    assert accepted(delete)["kind"] == "vm.delete"
    finished(api, delete)
    error_of(api.get("/v1/vms/web1"), 404, "NotFound")
    assert fake_host.host.guests == {}


def test_disk_resize_and_console(api: TestClient, image: str) -> None:
    make_vm(api)
    finished(api, api.post("/v1/vms/web1/disk/resize", json={"size": "8G"}))
    assert api.get("/v1/vms/web1").json()["disk_bytes"] == 8 * GIB
    error = error_of(api.post("/v1/vms/web1/disk/resize", json={"size": "2G"}), 400, "InvalidInput")
    assert error["details"]["field"] == "size"
    error = error_of(api.post("/v1/vms/web1/disk/resize", json={"size": "lots"}), 400, "InvalidInput")
    assert error["details"]["field"] == "size"

    console = api.get("/v1/vms/web1/console")
    assert console.status_code == 200
    body = console.json()
    assert "flexvm: ready name=web1" in body["text"]
    assert body["next_offset"] == len(body["text"].encode())
    assert api.get("/v1/vms/web1/console", params={"offset": body["next_offset"]}).json()["text"] == ""
    error = error_of(api.get("/v1/vms/web1/console", params={"offset": -1}), 400, "InvalidInput")
    assert error["details"]["field"] == "query.offset"


def test_operations_list_and_show(api: TestClient, image: str) -> None:
    make_vm(api)
    listed = api.get("/v1/operations", params={"target": "web1"}).json()
    assert [op["kind"] for op in listed] == ["vm.create"]
    shown = api.get(f"/v1/operations/{listed[0]['id']}").json()
    assert shown == listed[0]
    assert api.get("/v1/operations", params={"target": "nobody"}).json() == []


def test_a_failed_operation_names_the_call_that_shows_why(
    api: TestClient, platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    platform.booter.settings = dataclasses.replace(platform.booter.settings, ready_timeout=1.0)
    fake_host.host.ready_delay = None  # the guest never prints its readiness line
    created = accepted(api.post("/v1/vms", json={"name": "web1", "size": "Standard_B1s", "image": "img"}))
    operation = poll(api, f"/v1/operations/{created['id']}")
    assert operation["status"] == "failed"
    error = operation["error"]
    assert error["code"] == "OperationTimeout" and "flexvm" not in error["message"]
    assert error["details"]["remedy"] == {"action": "read_console", "vm": "web1"}
    assert error["details"]["hint"] == "read its console: GET /v1/vms/web1/console"


def test_hosts(api: TestClient, image: str) -> None:
    make_vm(api)
    hosts = api.get("/v1/hosts").json()
    assert [h["name"] for h in hosts] == ["local"]
    local = api.get("/v1/hosts/local").json()
    assert (local["state"], local["cpus"], local["memory_mib"]) == ("up", 4, 8192)
    assert local["vms"] == ["web1"]
    assert (local["vcpus_allocated"], local["memory_mib_allocated"], local["disk_bytes_allocated"]) == (
        1,
        1024,
        4 * GIB,
    )


def test_images(api: TestClient, image: str) -> None:
    listed = api.get("/v1/images").json()
    assert [i["name"] for i in listed] == ["img"]
    shown = api.get("/v1/images/img").json()
    assert shown == listed[0]
    assert shown["ready_marker"] == "flexvm: ready"


# --- bad input: 400 naming the field -------------------------------------------------------


def test_a_missing_field_names_it(api: TestClient, image: str) -> None:
    error = error_of(api.post("/v1/vms", json={"name": "web1", "size": "Standard_B1s"}), 400, "InvalidInput")
    assert error["details"]["field"] == "image"
    assert "image" in error["message"]


def test_an_extra_field_names_it(api: TestClient, image: str) -> None:
    body = {"name": "web1", "size": "Standard_B1s", "image": "img", "colour": "red"}
    error = error_of(api.post("/v1/vms", json=body), 400, "InvalidInput")
    assert error["details"]["field"] == "colour"


def test_a_wrong_type_names_the_field(api: TestClient) -> None:
    body = {"name": "Lab_1", "vcpus": "many", "memory": "512M", "disk": "2G"}
    error = error_of(api.post("/v1/sizes", json=body), 400, "InvalidInput")
    assert error["details"]["field"] == "vcpus"


def test_a_body_that_is_not_json_is_400_naming_the_body(api: TestClient) -> None:
    response = api.post("/v1/vms", content=b"name=web1", headers={"content-type": "application/json"})
    error = error_of(response, 400, "InvalidInput")
    assert error["details"]["field"] == "body"


@pytest.mark.parametrize("name", ["a'/><x", "$(id)", "..", "", "1web", "x" * 65, "web1\n"])
def test_a_bad_name_in_a_body_is_refused_and_nothing_is_made(
    api: TestClient, platform: Platform, image: str, name: str
) -> None:
    response = api.post("/v1/vms", json={"name": name, "size": "Standard_B1s", "image": "img"})
    error = error_of(response, 400, "InvalidInput")
    assert error["details"]["field"] == "name"
    assert platform.vms.list() == []


@pytest.mark.parametrize("action", ["GET {}", "DELETE {}", "POST {}/start", "POST {}/stop", "GET {}/console"])
def test_a_bad_name_in_a_path_is_refused(api: TestClient, action: str) -> None:
    method, template = action.split(" ")
    for name in ["$(id)", "a'><x", "..", "1web", "a b"]:
        response = api.request(method, "/v1/vms/" + template.format(encode_all(name)))
        error = error_of(response, 400, "InvalidInput")
        assert error["details"]["field"] == "name", name


def test_a_name_with_a_slash_in_a_path_matches_no_route(api: TestClient) -> None:
    # The slash splits the path (encoded or not), so no route takes it and nothing is looked up.
    error_of(api.get("/v1/vms/" + encode_all("a'/><x")), 404, "NotFound")


@pytest.mark.parametrize("path", ["/v1/images/{}", "/v1/hosts/{}"])
def test_bad_names_in_other_paths(api: TestClient, path: str) -> None:
    error = error_of(api.get(path.format(encode_all("$(id)"))), 400, "InvalidInput")
    assert error["details"]["field"] == "name"


def test_a_bad_operation_id_is_refused(api: TestClient) -> None:
    error = error_of(api.get("/v1/operations/" + encode_all("x'; drop")), 400, "InvalidInput")
    assert error["details"]["field"] == "operation_id"


def test_an_unknown_size_is_400_listing_the_known_ones(api: TestClient, image: str) -> None:
    body = {"name": "web1", "size": "Standard_Huge", "image": "img"}
    error = error_of(api.post("/v1/vms", json=body), 400, "InvalidInput")
    assert error["details"]["field"] == "size"
    assert "Standard_B1s" in error["message"]


# --- 404 and 409 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "name"),
    [
        ("/v1/vms/ghost", "VM", "ghost"),
        ("/v1/images/ghost", "image", "ghost"),
        ("/v1/hosts/ghost", "host", "ghost"),
        ("/v1/operations/00000000-0000-0000-0000-000000000000", "operation", "00000000-0000-0000-0000-000000000000"),
    ],
)
def test_unknown_things_are_404_in_azures_shape(api: TestClient, path: str, kind: str, name: str) -> None:
    error = error_of(api.get(path), 404, "NotFound")
    assert error["details"] == {"kind": kind, "name": name}
    assert error["message"] == f"{kind} '{name}' not found"


def test_an_unknown_route_is_404_in_the_same_shape(api: TestClient) -> None:
    error_of(api.get("/v1/nothing-here"), 404, "NotFound")


def test_a_wrong_method_is_405_in_the_same_shape(api: TestClient) -> None:
    error_of(api.put("/v1/vms"), 405, "MethodNotAllowed")


def test_a_duplicate_is_409(api: TestClient, image: str) -> None:
    make_vm(api)
    response = api.post("/v1/vms", json={"name": "web1", "size": "Standard_B1s", "image": "img"})
    error = error_of(response, 409, "AlreadyExists")
    assert error["details"] == {"kind": "VM", "name": "web1"}


def test_a_busy_vm_is_409_naming_the_operation(api: TestClient, fake_host: FakeDriver, image: str) -> None:
    fake_host.host.ready_delay = 0.5
    create = api.post("/v1/vms", json={"name": "web1", "size": "Standard_B1s", "image": "img"})
    creating = accepted(create)
    error = error_of(api.delete("/v1/vms/web1"), 409, "OperationInProgress")
    assert error["details"]["operation_id"] == creating["id"]
    finished(api, create)


def test_a_wrong_state_is_409(api: TestClient, image: str) -> None:
    make_vm(api)
    error = error_of(api.post("/v1/vms/web1/start"), 409, "InvalidState")
    assert error["details"] == {"power_state": "running", "action": "start"}


def test_no_room_is_409_saying_what_is_free(api: TestClient, image: str) -> None:
    body = {"name": "big", "size": "Standard_D8s_v5", "image": "img"}
    error = error_of(api.post("/v1/vms", json=body), 409, "InsufficientCapacity")
    assert "Free now:" in error["message"]
    assert set(error["details"]["hosts"]) == {"local"}


# --- sizes ---------------------------------------------------------------------------------


def test_create_a_size_with_units(api: TestClient) -> None:
    response = api.post("/v1/sizes", json={"name": "Lab_1", "vcpus": 1, "memory": "512M", "disk": "2G"})
    assert response.status_code == 201, response.text
    size = response.json()
    assert (size["name"], size["memory_mib"], size["disk_bytes"], size["builtin"]) == ("Lab_1", 512, 2 * GIB, False)
    listed = {s["name"]: s for s in api.get("/v1/sizes").json()}
    assert listed["Lab_1"]["memory_mib"] == 512
    assert listed["Standard_B1s"]["builtin"] is True


def test_bare_numbers_are_mib_of_memory_and_gib_of_disk(api: TestClient) -> None:
    size = api.post("/v1/sizes", json={"name": "Lab_2", "vcpus": 2, "memory": 768, "disk": 3}).json()
    assert (size["memory_mib"], size["disk_bytes"]) == (768, 3 * GIB)


def test_a_created_size_reports_how_many_fit(api: TestClient) -> None:
    created = api.post("/v1/sizes", json={"name": "Lab_3", "vcpus": 1, "memory": "512M", "disk": "2G"}).json()
    listed = {s["name"]: s for s in api.get("/v1/sizes").json()}
    assert listed["Lab_3"]["fits_now"] == 15  # 7.5 GiB / 512 MiB on the empty host
    assert created["fits_now"] == listed["Lab_3"]["fits_now"]


@pytest.mark.parametrize(
    ("memory", "disk", "field"),
    [("512X", "2G", "memory"), ("lots", "2G", "memory"), ("1000K", "2G", "memory"), ("512M", "2Q", "disk"),
     ("512M", "1M", "disk"), ("32M", "2G", "memory")],
)  # fmt: skip
def test_bad_units_are_400_naming_the_field(api: TestClient, memory: str, disk: str, field: str) -> None:
    response = api.post("/v1/sizes", json={"name": "Lab_4", "vcpus": 1, "memory": memory, "disk": disk})
    assert error_of(response, 400, "InvalidInput")["details"]["field"] == field
    assert "Lab_4" not in {s["name"] for s in api.get("/v1/sizes").json()}


def test_size_delete(api: TestClient) -> None:
    api.post("/v1/sizes", json={"name": "Lab_5", "vcpus": 1, "memory": "512M", "disk": "2G"})
    response = api.delete("/v1/sizes/Lab_5")
    assert response.status_code == 204
    assert response.content == b""
    error_of(api.delete("/v1/sizes/Lab_5"), 404, "NotFound")
    error_of(api.delete("/v1/sizes/Standard_B1s"), 409, "Conflict")
    error_of(api.post("/v1/sizes", json={"name": "Standard_B1s", "vcpus": 1, "memory": 512, "disk": 4}), 409,
             "AlreadyExists")  # fmt: skip
