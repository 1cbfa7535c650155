"""The many-hosts routes of the REST API: hosts, networks, availability sets, capacity.

Pins: POST /v1/hosts answers 202 with the operation (polling it reaches succeeded), PATCH changes
settings and answers the detail, DELETE answers 204 (409 naming the VMs while any are there);
networks and availability sets are created (201), listed, shown (with the layout) and deleted
(204, 409 while in use); capacity, what-if and failure answer the service's figures; every error
is Azure's shape {"error": {"code", "message", "details"}} with the field named for bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from flexvm.model.units import GIB
from flexvm.platform import Platform
from tests.unit.api_helpers import error_of, finished
from tests.unit.pool_helpers import fake_uri


def add_host(api: TestClient, name: str, **settings: Any) -> dict[str, Any]:
    return finished(api, api.post("/v1/hosts", json={"name": name, "uri": fake_uri(), **settings}))


def make_vm(api: TestClient, name: str, **extra: Any) -> None:
    finished(api, api.post("/v1/vms", json={"name": name, "size": "Standard_B1s", "image": "img", **extra}))


# --- hosts -------------------------------------------------------------------------------------


def test_add_a_host_is_202_and_its_operation_succeeds(api: TestClient) -> None:
    uri = fake_uri()
    body = {"name": "h2", "uri": uri, "cpu_ratio": 2, "fault_domain": "rack-1", "memory": "4G", "reserved_memory": "1G"}
    response = api.post("/v1/hosts", json=body)
    operation = finished(api, response)
    assert (operation["kind"], operation["target_kind"], operation["target_name"]) == ("host.add", "host", "h2")
    assert operation["result"]["accelerator"] == "tcg"
    host = api.get("/v1/hosts/h2").json()
    assert (host["uri"], host["state"], host["cpu_ratio"], host["fault_domain"]) == (uri, "up", 2.0, "rack-1")
    assert (host["advertised_memory_mib"], host["reserved_memory_mib"]) == (4096, 1024)
    assert (host["vms"], host["leftovers"], host["vcpus_allocated"]) == ([], [], 0)
    assert [h["name"] for h in api.get("/v1/hosts").json()] == ["h2", "local"]


BAD_HOSTS = [
    ({"uri": "nonsense"}, "uri"),
    ({"uri": "http://x"}, "uri"),
    ({"uri": "qemu+tcp:///system"}, "uri"),
    ({"uri": "qemu:///nowhere"}, "uri"),
    ({"cpu_ratio": 0.5}, "cpu_ratio"),
    ({"ram_ratio": 10}, "ram_ratio"),
    ({"cpus": 0}, "cpus"),
    ({"memory": "lots"}, "memory"),
    ({"reserved_memory": "1000K"}, "reserved_memory"),  # memory is counted in whole MiB, as sizes are
    ({"name": "bad name"}, "name"),
    ({"colour": "blue"}, "colour"),
]


def test_bad_host_input_is_400_naming_the_field(api: TestClient) -> None:
    for body, field in BAD_HOSTS:
        request = {"name": "h2", "uri": fake_uri(), **body}
        error = error_of(api.post("/v1/hosts", json=request), 400, "InvalidInput")
        assert error["details"]["field"] == field, body
    assert [h["name"] for h in api.get("/v1/hosts").json()] == ["local"]


def test_an_unreachable_host_fails_its_operation_and_a_duplicate_is_409(api: TestClient, platform: Platform) -> None:
    response = api.post("/v1/hosts", json={"name": "h2", "uri": "qemu+tcp://127.0.0.1:1/system"})
    operation = finished(api, response, status="failed")
    assert operation["error"]["code"] == "HypervisorUnavailable"
    error_of(api.get("/v1/hosts/h2"), 404, "NotFound")
    error = error_of(api.post("/v1/hosts", json={"name": "local", "uri": fake_uri()}), 409, "AlreadyExists")
    assert error["details"]["name"] == "local"
    error_of(api.post("/v1/hosts", json={"name": "h2", "uri": platform.settings.local_uri}), 409, "AlreadyExists")


def test_patch_a_host_answers_the_detail_and_capacity_follows(api: TestClient) -> None:
    response = api.patch("/v1/hosts/local", json={"cpu_ratio": 2, "fault_domain": "rack-9", "memory": "4G"})
    assert response.status_code == 200, response.text
    host = response.json()
    assert (host["cpu_ratio"], host["fault_domain"], host["advertised_memory_mib"]) == (2.0, "rack-9", 4096)
    (local,) = api.get("/v1/capacity").json()["hosts"]
    assert (local["vcpus_total"], local["memory_mib_total"]) == (8, 3584)


def test_patch_errors_change_nothing(api: TestClient) -> None:
    error = error_of(api.patch("/v1/hosts/local", json={"cpu_ratio": 1000}), 400, "InvalidInput")
    assert error["details"]["field"] == "cpu_ratio" and "between 1 and 64" in error["message"]
    error = error_of(api.patch("/v1/hosts/local", json={"network": "lan"}), 400, "InvalidInput")
    assert error["details"]["field"] == "bridge"
    error_of(api.patch("/v1/hosts/local", json={"network": "lan", "bridge": "br0"}), 404, "NotFound")
    error_of(api.patch("/v1/hosts/nope", json={"cpu_ratio": 2}), 404, "NotFound")
    assert api.get("/v1/hosts/local").json()["cpu_ratio"] == 4.0


def test_delete_a_host_is_204_or_409_while_it_has_vms(api: TestClient, image: str) -> None:
    add_host(api, "h2")
    make_vm(api, "web1", host="h2")
    error = error_of(api.delete("/v1/hosts/h2"), 409, "Conflict")
    assert error["details"] == {"vms": ["web1"]}
    finished(api, api.delete("/v1/vms/web1"))
    assert api.delete("/v1/hosts/h2").status_code == 204
    error_of(api.get("/v1/hosts/h2"), 404, "NotFound")
    error_of(api.delete("/v1/hosts/h2"), 404, "NotFound")


# --- networks ----------------------------------------------------------------------------------


def network_body(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return {
        "name": "lan",
        "subnet": "10.213.0.0/24",
        "range_start": "10.213.0.10",
        "range_end": "10.213.0.20",
        "gateway": "10.213.0.1",
        "dhcp_hosts_dir": str(tmp_path),
        **changes,
    }


def test_network_crud(api: TestClient, tmp_path: Path) -> None:
    response = api.post("/v1/networks", json=network_body(tmp_path))
    assert response.status_code == 201, response.text
    created = response.json()
    fields = {"name", "subnet", "range_start", "range_end", "gateway", "dhcp_hosts_dir", "created_at", "isolated"}
    assert set(created) == fields
    assert (created["subnet"], created["dhcp_hosts_dir"], created["isolated"]) == ("10.213.0.0/24", str(tmp_path), True)
    assert [n["name"] for n in api.get("/v1/networks").json()] == ["lan"]
    assert api.get("/v1/networks/lan").json() == created
    error_of(api.post("/v1/networks", json=network_body(tmp_path)), 409, "AlreadyExists")
    assert api.delete("/v1/networks/lan").status_code == 204
    assert api.get("/v1/networks").json() == []
    error_of(api.get("/v1/networks/lan"), 404, "NotFound")


BAD_NETWORKS = [
    ({"subnet": "10.213.0.0/33"}, "subnet"),
    ({"range_start": "10.9.9.9"}, "range_start"),
    ({"range_start": "10.213.0.30"}, "range_end"),
    ({"dhcp_hosts_dir": "relative"}, "dhcp_hosts_dir"),
    ({"name": "bad name"}, "name"),
    ({"range_end": None}, "range_end"),
]


def test_bad_networks_are_400_naming_the_field(api: TestClient, tmp_path: Path) -> None:
    for changes, field in BAD_NETWORKS:
        body = {k: v for k, v in network_body(tmp_path, **changes).items() if v is not None}
        error = error_of(api.post("/v1/networks", json=body), 400, "InvalidInput")
        assert error["details"]["field"] == field, changes
    assert api.get("/v1/networks").json() == []


def test_a_network_used_by_a_host_is_409_on_delete(api: TestClient, tmp_path: Path, image: str) -> None:
    api.post("/v1/networks", json=network_body(tmp_path))
    add_host(api, "h2", network="lan", bridge="br-lan")
    error = error_of(api.delete("/v1/networks/lan"), 409, "Conflict")
    assert error["details"] == {"hosts": ["h2"]}
    make_vm(api, "web1", host="h2")
    nic = api.get("/v1/vms/web1").json()["nics"][0]
    assert nic["network"] == "lan"
    assert (tmp_path / f"flexvm-{nic['mac'].replace(':', '-')}").exists()


# --- availability sets -------------------------------------------------------------------------


def test_availability_set_crud_with_layout(api: TestClient, image: str) -> None:
    add_host(api, "h2")
    response = api.post("/v1/availability-sets", json={"name": "web", "fault_domains": 2})
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["name"], created["fault_domains"], created["layout"]) == ("web", 2, {})
    make_vm(api, "web1", availability_set="web")
    make_vm(api, "web2", availability_set="web")
    shown = api.get("/v1/availability-sets/web").json()
    assert shown["layout"] in (
        {"local": {"local": ["web1"]}, "h2": {"h2": ["web2"]}},
        {"local": {"local": ["web2"]}, "h2": {"h2": ["web1"]}},
    )
    assert [s["name"] for s in api.get("/v1/availability-sets").json()] == ["web"]
    assert api.get("/v1/vms/web1").json()["availability_set"] == "web"
    error = error_of(api.delete("/v1/availability-sets/web"), 409, "Conflict")
    assert error["details"] == {"vms": ["web1", "web2"]}
    finished(api, api.delete("/v1/vms/web1"))
    finished(api, api.delete("/v1/vms/web2"))
    assert api.delete("/v1/availability-sets/web").status_code == 204
    error_of(api.get("/v1/availability-sets/web"), 404, "NotFound")


BAD_SETS = [
    ({"name": "web", "fault_domains": 0}, "fault_domains"),
    ({"name": "web", "fault_domains": 33}, "fault_domains"),
    ({"name": "web", "fault_domains": "2"}, "fault_domains"),
    ({"name": "web set", "fault_domains": 2}, "name"),
]


def test_bad_availability_sets_are_400_naming_the_field(api: TestClient) -> None:
    for body, field in BAD_SETS:
        error = error_of(api.post("/v1/availability-sets", json=body), 400, "InvalidInput")
        assert error["details"]["field"] == field, body
    assert api.get("/v1/availability-sets").json() == []


def test_a_full_set_is_409_with_a_reason_per_host(api: TestClient, image: str) -> None:
    api.post("/v1/availability-sets", json={"name": "web", "fault_domains": 1})
    add_host(api, "h2")
    make_vm(api, "web1", availability_set="web", host="local")
    api.patch("/v1/hosts/local", json={"memory": "1536M"})  # now full: 1 GiB of room, 1 GiB used
    response = api.post(
        "/v1/vms", json={"name": "web2", "size": "Standard_B1s", "image": "img", "availability_set": "web"}
    )
    error = error_of(response, 409, "InsufficientCapacity")
    assert error["details"]["hosts"] == {
        "h2": "availability set web already uses all of its 1 fault domains (local)",
        "local": "needs 1G memory, 0B free",
    }


# --- capacity ----------------------------------------------------------------------------------


def test_capacity_report(api: TestClient, image: str) -> None:
    make_vm(api, "web1")
    body = api.get("/v1/capacity").json()
    (local,) = body["hosts"]
    # The fixture's host: 4 CPUs x 4 = 16 vCPUs; 8192 - 512 = 7680 MiB; 100G. One B1s on it.
    assert (local["name"], local["state"], local["physical_cpus"], local["physical_memory_mib"]) == (
        "local",
        "up",
        4,
        8192,
    )
    assert (local["vcpus_total"], local["vcpus_allocated"]) == (16, 1)
    assert (local["memory_mib_total"], local["memory_mib_allocated"]) == (7680, 1024)
    assert (local["disk_bytes_total"], local["disk_bytes_allocated"]) == (100 * GIB, 4 * GIB)
    assert local["fits"]["Standard_B1s"] == 6  # (7680 - 1024) // 1024
    assert body["fits"]["Standard_B1s"] == 6
    assert set(body["fits"]) == set(local["fits"])


def test_what_if(api: TestClient) -> None:
    response = api.get("/v1/capacity/what-if", params={"batch": "Standard_B1s=7,Standard_B1ls=1"})
    assert response.status_code == 200, response.text
    b1s, b1ls = response.json()
    assert b1s == {"size": "Standard_B1s", "requested": 7, "fits": True, "placed": {"local": 7}, "first_failure": None}
    assert (b1ls["fits"], b1ls["placed"]) == (True, {"local": 1})
    (too_many,) = api.get("/v1/capacity/what-if", params={"batch": "Standard_B1s=8"}).json()
    assert (too_many["fits"], too_many["placed"]) == (False, {"local": 7})
    assert "local: needs 1G memory, 512M free" in too_many["first_failure"]
    spread = api.get("/v1/capacity/what-if", params={"batch": "Standard_B1s=1", "policy": "spread"})
    assert spread.json()[0]["placed"] == {"local": 1}


BAD_WHAT_IFS: list[tuple[dict[str, str], str]] = [
    ({"batch": "B2s"}, "what_if"),
    ({"batch": "Standard_B2s=0"}, "what_if"),
    ({"batch": ""}, "what_if"),
    ({"batch": "x=1"}, "size"),
    ({}, "query.batch"),
    ({"batch": "Standard_B1s=1", "policy": "random"}, "policy"),
]


def test_what_if_errors_are_400_naming_the_field(api: TestClient) -> None:
    assert api.get("/v1/capacity/what-if", params={"batch": "Standard_B1s=1"}).status_code == 200
    for params, field in BAD_WHAT_IFS:
        error = error_of(api.get("/v1/capacity/what-if", params=params), 400, "InvalidInput")
        assert error["details"]["field"] == field, params


def test_failure(api: TestClient, image: str) -> None:
    add_host(api, "h2")
    make_vm(api, "web1", host="local")
    make_vm(api, "web2", host="local")
    body = api.get("/v1/capacity/failure").json()
    assert body == {"lost_host": "local", "survives": True, "moved": {"web1": "h2", "web2": "h2"}, "homeless": {}}
    named = api.get("/v1/capacity/failure", params={"host": "h2"}).json()
    assert named == {"lost_host": "h2", "survives": True, "moved": {}, "homeless": {}}
    error = error_of(api.get("/v1/capacity/failure", params={"host": "nope"}), 400, "InvalidInput")
    assert error["details"]["field"] == "host"


def test_failure_lists_the_homeless(api: TestClient, image: str) -> None:
    add_host(api, "h2", memory="1G")  # (1024 - 512) of room: no B1s fits there
    make_vm(api, "web1", host="local")
    body = api.get("/v1/capacity/failure").json()
    assert (body["lost_host"], body["survives"], body["moved"]) == ("local", False, {})
    assert "h2: larger than this host can ever hold: needs 1G memory" in body["homeless"]["web1"]
