"""The scale-set and autoscale routes of the REST API, on the fake host.

Pins: create, scale, update and delete answer 202 with the operation and its Location, and once
it succeeds GET shows the set (with its instances counted by state) and its instances; a load
balancer with no host network is refused naming lb_port; autoscale profiles and rules are refused
with 400 naming the field in the request's own words (min, threshold, metric with the known ones);
a rule comes back with its id, its description and warnings for rules that work against it;
history starts empty and records what autoscale did; simulate replays a synthetic day.

Sets here have no load balancer, so no HAProxy is ever started.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from flexvm.drivers.fake import FakeDriver
from flexvm.platform import Platform
from tests.unit.api_helpers import error_of, finished

SET_KEYS = {
    "name", "project", "size", "image", "capacity", "fault_domains", "scale_in_policy", "load_balancer", "network",
    "model_version", "max_unavailable", "active_operation_id", "error", "replaced", "autoscale", "rules",
    "created_at", "instances",
}  # fmt: skip
INSTANCE_KEYS = {
    "name", "index", "state", "model_version", "current_model", "host", "ip", "power_state", "provisioning_state",
    "lb_status", "created_at", "project",
}  # fmt: skip
OUT_RULE = {"metric": "cpu_percent", "operator": "gt", "threshold": 70, "action": "increase"}
IN_RULE = {"metric": "cpu_percent", "operator": "lt", "threshold": 30, "action": "decrease"}


def make_set(api: TestClient, name: str = "web", instances: int = 2, **extra: Any) -> dict[str, Any]:
    # One fault domain: the fixture's pool is one host, and a set spreads over its fault domains.
    body = {"name": name, "size": "Standard_B1s", "image": "img", "instances": instances, "fault_domains": 1, **extra}
    response = api.post("/v1/scalesets", json=body)
    assert response.json()["kind"] == "scaleset.create", response.text
    finished(api, response)
    shown = api.get(f"/v1/scalesets/{name}")
    assert shown.status_code == 200, shown.text
    return shown.json()


def wait_idle(platform: Platform, name: str, timeout: float = 30.0) -> None:
    """Until no operation works on the set (autoscale starts converges of its own)."""
    deadline = time.monotonic() + timeout
    while platform.scale_sets.get(name).active_operation_id is not None:
        assert time.monotonic() < deadline, "the scale set stayed busy"
        time.sleep(0.02)


# --- the set ---------------------------------------------------------------------------------


def test_create_show_instances_scale_update_and_delete(api: TestClient, fake_host: FakeDriver, image: str) -> None:
    created = make_set(api, instances=2)
    assert set(created) == SET_KEYS
    assert (created["name"], created["size"], created["image"], created["capacity"]) == (
        "web",
        "Standard_B1s",
        "img",
        2,
    )
    assert created["instances"] == {"serving": 2}
    assert (created["load_balancer"], created["autoscale"], created["rules"]) == (None, None, [])
    assert (created["scale_in_policy"], created["max_unavailable"], created["model_version"]) == ("default", 1, 1)
    assert api.get("/v1/scalesets").json() == [created]

    instances = api.get("/v1/scalesets/web/instances").json()
    assert [set(i) for i in instances] == [INSTANCE_KEYS] * 2
    assert sorted(i["name"] for i in instances) == ["web-0", "web-1"]
    assert {(i["state"], i["host"], i["power_state"], i["current_model"]) for i in instances} == {
        ("serving", "local", "running", True)
    }
    assert sorted(fake_host.host.guests) == ["web-0", "web-1"]

    scaled = api.post("/v1/scalesets/web/scale", json={"instances": 3})
    assert scaled.json()["kind"] == "scaleset.scale"
    finished(api, scaled)
    assert api.get("/v1/scalesets/web").json()["instances"] == {"serving": 3}

    updated = api.post("/v1/scalesets/web/update", json={"max_unavailable": 2})
    assert updated.json()["kind"] == "scaleset.update"
    finished(api, updated)
    shown = api.get("/v1/scalesets/web").json()
    assert (shown["max_unavailable"], shown["model_version"]) == (2, 1)

    deleted = api.delete("/v1/scalesets/web")
    assert deleted.json()["kind"] == "scaleset.delete"
    finished(api, deleted)
    error_of(api.get("/v1/scalesets/web"), 404, "NotFound")
    assert api.get("/v1/scalesets").json() == []
    assert fake_host.host.guests == {}


def test_bad_bodies_name_the_field(api: TestClient, image: str) -> None:
    base = {"name": "web", "size": "Standard_B1s", "image": "img", "instances": 1}
    error_of(api.post("/v1/scalesets", json={**base, "instances": "two"}), 400, "InvalidInput", "instances")
    error_of(api.post("/v1/scalesets", json={**base, "scale_in_policy": "random"}), 400, "InvalidInput")
    error_of(api.post("/v1/scalesets", json={**base, "instances": -1}), 400, "InvalidInput", "instances")
    error_of(api.post("/v1/scalesets", json={**base, "image": "nope"}), 400, "InvalidInput", "image")
    error_of(api.post("/v1/scalesets", json={**base, "surprise": 1}), 400, "InvalidInput", "surprise")
    error_of(api.post("/v1/scalesets/web/scale", json={"instances": 2}), 404, "NotFound")
    assert api.get("/v1/scalesets").json() == []


def test_a_load_balancer_needs_a_host_network(api: TestClient, image: str) -> None:
    body = {"name": "web", "size": "Standard_B1s", "image": "img", "instances": 1, "lb_port": "8080:80"}
    error = error_of(api.post("/v1/scalesets", json=body), 400, "InvalidInput", "lb_port")
    assert "host network" in error["message"]
    bad_port = {**body, "lb_port": "80:99999"}
    error_of(api.post("/v1/scalesets", json=bad_port), 400, "InvalidInput", "lb_port")
    assert api.get("/v1/scalesets").json() == []


# --- autoscale -------------------------------------------------------------------------------


def test_profile_set_refused_and_off(api: TestClient, image: str) -> None:
    make_set(api, instances=1)
    profile = api.put("/v1/scalesets/web/autoscale", json={"min": 1, "max": 4, "default": 1})
    assert profile.status_code == 200, profile.text
    assert profile.json() == {"min": 1, "max": 4, "default": 1}
    assert api.get("/v1/scalesets/web").json()["autoscale"] == {"min": 1, "max": 4, "default": 1}

    error = error_of(
        api.put("/v1/scalesets/web/autoscale", json={"min": 5, "max": 2, "default": 3}), 400, "InvalidInput", "min"
    )
    assert "larger than max" in error["message"]
    error_of(
        api.put("/v1/scalesets/web/autoscale", json={"min": 1, "max": 3, "default": 9}), 400, "InvalidInput", "default"
    )
    error_of(api.put("/v1/scalesets/web/autoscale", json={"min": 1, "max": 3}), 400, "InvalidInput", "default")
    error_of(api.put("/v1/scalesets/nope/autoscale", json={"min": 1, "max": 3, "default": 1}), 404, "NotFound")

    # Out of the range: scale says how to change it.
    error_of(api.post("/v1/scalesets/web/scale", json={"instances": 5}), 400, "InvalidInput", "instances")
    off = api.delete("/v1/scalesets/web/autoscale")
    assert off.status_code == 204
    assert api.get("/v1/scalesets/web").json()["autoscale"] is None


def test_rules_added_listed_refused_and_removed(api: TestClient, image: str) -> None:
    make_set(api, instances=1)
    added = api.post("/v1/scalesets/web/autoscale/rules", json=OUT_RULE)
    assert added.status_code == 201, added.text
    rule = added.json()["rule"]
    assert added.json()["warnings"] == []
    assert rule["id"] == "r1"
    assert (rule["grain_seconds"], rule["window_seconds"], rule["cooldown_seconds"]) == (60, 300, 300)
    assert (rule["statistic"], rule["count"], rule["action"], rule["operator"]) == ("avg", 1, "increase", "gt")
    assert rule["description"] == "scale out by 1 when avg cpu_percent over 5m (1m grain) > 70, cooldown 5m"

    # A scale-in rule whose range overlaps the scale-out one: added, with a warning.
    clash = api.post(
        "/v1/scalesets/web/autoscale/rules", json={**IN_RULE, "threshold": 80, "window": "10m", "cooldown": "10m"}
    )
    assert clash.status_code == 201, clash.text
    assert clash.json()["rule"]["id"] == "r2"
    [warning] = clash.json()["warnings"]
    assert "'r1'" in warning and "'r2'" in warning and "both fire" in warning

    listed = api.get("/v1/scalesets/web/autoscale/rules").json()
    assert [r["id"] for r in listed] == ["r1", "r2"]
    assert api.get("/v1/scalesets/web").json()["rules"] == listed

    assert api.delete("/v1/scalesets/web/autoscale/rules/r2").status_code == 204
    assert [r["id"] for r in api.get("/v1/scalesets/web/autoscale/rules").json()] == ["r1"]
    error_of(api.delete("/v1/scalesets/web/autoscale/rules/r9"), 400, "InvalidInput", "rule_id")


def test_bad_rules_name_the_field_and_the_rule(api: TestClient, image: str) -> None:
    make_set(api, instances=1)
    path = "/v1/scalesets/web/autoscale/rules"
    error = error_of(api.post(path, json={**OUT_RULE, "threshold": 140}), 400, "InvalidInput", "threshold")
    assert "0 to 100" in error["message"]
    error = error_of(api.post(path, json={**OUT_RULE, "metric": "happiness"}), 400, "InvalidInput", "metric")
    assert "cpu_percent" in error["message"] and "requests_per_s" in error["message"]
    error_of(api.post(path, json={**OUT_RULE, "operator": "bigger"}), 400, "InvalidInput", "operator")
    error_of(api.post(path, json={**OUT_RULE, "action": "sideways"}), 400, "InvalidInput", "action")
    error_of(api.post(path, json={**OUT_RULE, "grain": "10m", "window": "5m"}), 400, "InvalidInput", "grain")
    error_of(api.post(path, json={**OUT_RULE, "window": "five"}), 400, "InvalidInput", "window")
    error_of(api.post(path, json={**OUT_RULE, "statistic": "median"}), 400, "InvalidInput", "statistic")
    error_of(api.post(path, json={**OUT_RULE, "count": 0}), 400, "InvalidInput", "count")
    assert api.get(path).json() == []


def test_history_is_empty_then_records_what_autoscale_did(api: TestClient, platform: Platform, image: str) -> None:
    make_set(api, instances=1)
    assert api.get("/v1/scalesets/web/autoscale/history").json() == []
    api.put("/v1/scalesets/web/autoscale", json={"min": 2, "max": 4, "default": 2})
    decision = platform.autoscale.evaluate("web")  # below min: moved into the range
    assert decision is not None and decision.action == "increase"
    wait_idle(platform, "web")
    [event] = api.get("/v1/scalesets/web/autoscale/history").json()
    assert (event["action"], event["current"], event["target"]) == ("increase", 1, 2)
    assert "below min" in event["reason"]
    assert api.get("/v1/scalesets/web").json()["capacity"] == 2
    assert api.get("/v1/scalesets/web/autoscale/history", params={"limit": 0}).status_code == 400
    error_of(api.get("/v1/scalesets/nope/autoscale/history"), 404, "NotFound")


def test_simulate_a_synthetic_day(api: TestClient, image: str) -> None:
    make_set(api, instances=1)
    path = "/v1/scalesets/web/autoscale/simulate"
    error_of(api.post(path, json={"synthetic": True}), 400, "InvalidInput", "profile")

    api.put("/v1/scalesets/web/autoscale", json={"min": 1, "max": 6, "default": 2})
    api.post("/v1/scalesets/web/autoscale/rules", json=OUT_RULE)
    api.post("/v1/scalesets/web/autoscale/rules", json=IN_RULE)
    response = api.post(path, json={"synthetic": True, "from": "2024-05-01T00:00:00Z", "step": "1m"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["start"] == 1714521600 and result["end"] == 1714521600 + 86400
    assert result["timeline"][0]["at"] == result["start"]
    assert set(result["timeline"][0]) == {"at", "current", "count", "action", "target", "reason", "rule_id"}
    assert result["actions"] > 0 and result["max_count"] > result["min_count"] >= 1
    assert any(entry["action"] == "increase" for entry in result["timeline"])
    assert "flaps:" in result["text"] and "instance-minutes" in result["text"]
    assert result["instance_minutes"] > 0 and result["recorded_instance_minutes"] > 0

    # Rules and profile given in the request, the set's own untouched.
    tried = api.post(
        path,
        json={
            "synthetic": True,
            "rules": [OUT_RULE],
            "profile": {"min": 1, "max": 2, "default": 1},
            "flap_guard": False,
        },
    )
    assert tried.status_code == 200, tried.text
    assert tried.json()["max_count"] <= 2
    bad = {"synthetic": True, "rules": [OUT_RULE, {**IN_RULE, "threshold": 140}]}
    error_of(api.post(path, json=bad), 400, "InvalidInput", "rules.1.threshold")
    bad_profile = {"synthetic": True, "profile": {"min": 3, "max": 2, "default": 2}}
    error_of(api.post(path, json=bad_profile), 400, "InvalidInput", "profile.min")
    error_of(api.post(path, json={"from": "yesterday"}), 400, "InvalidInput", "from")
    error_of(api.post(path, json={"from": "-1h", "to": "-2h"}), 400, "InvalidInput", "to")
    error_of(api.post(path, json={"from": "-1h"}), 400, "InvalidInput", "from")  # nothing recorded yet
    assert len(api.get("/v1/scalesets/web/autoscale/rules").json()) == 2
