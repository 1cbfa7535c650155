"""Many people on one platform, through the API: projects, tokens, roles, quotas and the audit trail."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from flexvm.api.app import create_app
from flexvm.drivers.fake import FakeDriver
from flexvm.model.access import Role
from flexvm.platform import Platform
from flexvm.store.tables import TokenRow
from tests.conftest import TOKEN
from tests.unit.api_helpers import error_of, finished

CREATE = {"size": "Standard_B1s", "image": "img"}

Login = Callable[..., TestClient]


@pytest.fixture
def login(platform: Platform, image: str) -> Iterator[Login]:
    """``login("alice", Role.CONTRIBUTOR, "team-a")``: a client holding a new token of that user
    (made, and given the role, if it is not yet)."""
    app = create_app(platform, TOKEN)
    people = app.state.people
    clients: list[TestClient] = []

    def make(
        user: str, role: Role | None = None, project: str | None = "team-a", *, cap: Role | None = None,
        only: str | None = None,
    ) -> TestClient:  # fmt: skip
        if user not in {u.name for u in people.users()}:
            people.create_user(user)
        if role is not None:
            people.assign(user, role, project)
        _, secret = people.create_token(user, role=cap, project=only)
        client = TestClient(app, headers={"Authorization": f"Bearer {secret}"})
        clients.append(client)
        return client

    for name in ("team-a", "team-b"):
        platform.projects.create(name)
    yield make
    for client in clients:
        client.close()


def vm_names(api: TestClient, project: str) -> list[str]:
    return sorted(vm["name"] for vm in api.get("/v1/vms", params={"project": project}).json())


# --- projects ---------------------------------------------------------------------------------


def test_two_projects_each_have_a_web1_and_their_guests_never_clash(
    api: TestClient, login: Login, fake_host: FakeDriver
) -> None:
    finished(api, api.post("/v1/vms", json={"name": "web1", **CREATE}, params={"project": "team-a"}))
    finished(api, api.post("/v1/vms", json={"name": "web1", **CREATE}, params={"project": "team-b"}))
    finished(api, api.post("/v1/vms", json={"name": "web1", **CREATE}))  # the default project's
    assert vm_names(api, "team-a") == vm_names(api, "team-b") == vm_names(api, "default") == ["web1"]
    shown = api.get("/v1/vms/web1", params={"project": "team-a"}).json()
    assert (shown["name"], shown["project"]) == ("web1", "team-a")
    # The guests say whose they are, as `virsh list` shows them.
    assert {g.name for g in fake_host.list_guests()} == {"web1", "team-a.web1", "team-b.web1"}
    deleted = finished(api, api.delete("/v1/vms/web1", params={"project": "team-a"}))
    assert (deleted["project"], deleted["target_name"]) == ("team-a", "web1")
    assert vm_names(api, "team-a") == [] and vm_names(api, "team-b") == ["web1"]


def test_a_project_is_refused_deletion_while_it_holds_a_vm(api: TestClient, login: Login) -> None:
    finished(api, api.post("/v1/vms", json={"name": "web1", **CREATE}, params={"project": "team-a"}))
    err = error_of(api.delete("/v1/projects/team-a"), 409, "Conflict")
    assert "1 VMs" in err["message"] and err["details"]["holds"] == {"VMs": 1}
    finished(api, api.delete("/v1/vms/web1", params={"project": "team-a"}))
    assert api.delete("/v1/projects/team-a").status_code == 204
    error_of(api.get("/v1/projects/team-a"), 404, "NotFound")


def test_bad_project_names_and_quotas_name_the_field(api: TestClient) -> None:
    error_of(api.post("/v1/projects", json={"name": "Team_A"}), 400, "InvalidInput", "name")
    error_of(
        api.post("/v1/projects", json={"name": "ok", "quotas": {"vcpus": -1}}), 400, "InvalidInput", "quotas.vcpus"
    )
    error_of(api.post("/v1/projects", json={"name": "ok", "quotas": {"memory": "lots"}}), 400, "InvalidInput")
    error_of(api.get("/v1/vms", params={"project": "Not.A.Project"}), 400, "InvalidInput", "project")
    assert [p["name"] for p in api.get("/v1/projects").json()] == ["default"]


def test_a_project_deleted_while_a_create_runs_in_it_refuses_one_of_the_two(
    api: TestClient, platform: Platform, image: str
) -> None:
    for attempt in range(5):
        name = f"race{attempt}"
        platform.projects.create(name)
        answers: dict[str, int] = {}

        def create(project: str = name, answers: dict[str, int] = answers) -> None:
            answers["create"] = api.post(
                "/v1/vms", json={"name": "web1", **CREATE}, params={"project": project}
            ).status_code

        def delete(project: str = name, answers: dict[str, int] = answers) -> None:
            answers["delete"] = api.delete(f"/v1/projects/{project}").status_code

        threads = [threading.Thread(target=create), threading.Thread(target=delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        # Either the create came first (the delete is refused: the project holds a VM) or the
        # delete did (the create finds no project): never both, never a VM without its project.
        assert sorted(answers.values()) in ([202, 409], [204, 404]), answers
        if answers["create"] == 202:
            assert vm_names(api, name) == ["web1"]
        else:
            assert not any(vm.name.startswith(f"{name}.") for vm in platform.vms.list())


# --- tokens -----------------------------------------------------------------------------------


def test_every_bad_token_gets_one_answer_and_the_audit_says_which(
    api: TestClient, login: Login, platform: Platform
) -> None:
    alice = login("alice", Role.CONTRIBUTOR)
    assert alice.get("/v1/vms", params={"project": "team-a"}).status_code == 200
    good = alice.headers["authorization"].removeprefix("Bearer ")
    token_id = good.split("_")[1]
    people = alice.app.state.people  # type: ignore[attr-defined]
    revoked = people.create_token("alice")[1]
    people.revoke_token(revoked.split("_")[1])
    expired = people.create_token("alice", expires_in=3600)[1]
    with platform.db.session() as session:
        row = session.get(TokenRow, expired.split("_")[1])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    wrong_secret = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    bodies = []
    for header in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {revoked}"},
                   {"Authorization": f"Bearer {expired}"}, {"Authorization": f"Bearer {wrong_secret}"},
                   {"Authorization": good}):  # fmt: skip
        response = TestClient(alice.app).get("/v1/vms", params={"project": "team-a"}, headers=header)
        bodies.append(error_of(response, 401, "Unauthorized"))
    assert all(body == bodies[0] for body in bodies)
    reasons = {e["detail"] for e in api.get("/v1/audit/all", params={"limit": 20}).json() if e["status"] == 401}
    assert {"token missing", "token malformed", "token revoked", "token expired", "token unknown"} <= reasons
    # Only the hash is kept, and a token records when it was last used.
    with platform.db.session() as session:
        stored = session.scalars(select(TokenRow).where(TokenRow.id == token_id)).one()
        assert good.split("_")[2] not in (stored.secret_sha256, stored.name) and stored.last_used_at is not None


def test_a_disabled_users_tokens_stop_at_once(api: TestClient, login: Login) -> None:
    bob = login("bob", Role.READER)
    assert bob.get("/v1/vms", params={"project": "team-a"}).status_code == 200
    assert api.patch("/v1/users/bob", json={"disabled": True}).json()["disabled"] is True
    error_of(bob.get("/v1/vms", params={"project": "team-a"}), 401, "Unauthorized")
    api.patch("/v1/users/bob", json={"disabled": False})
    assert bob.get("/v1/vms", params={"project": "team-a"}).status_code == 200


def test_token_create_shows_the_secret_once_and_lists_never_do(api: TestClient, login: Login) -> None:
    login("carol", Role.READER)
    made = api.post("/v1/tokens", json={"user": "carol", "name": "ci", "expires": "30d"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["token"].startswith("flexvm_") and body["state"] == "active" and body["expires_at"]
    listed = api.get("/v1/tokens", params={"user": "carol"}).json()
    assert body["id"] in {t["id"] for t in listed} and all("token" not in t for t in listed)
    error_of(api.post("/v1/tokens", json={"user": "carol", "expires": "soon"}), 400, "InvalidInput", "expires")
    error_of(api.post("/v1/tokens", json={"user": "carol", "role": "Boss"}), 400, "InvalidInput", "role")
    error_of(api.post("/v1/tokens", json={"user": "nobody"}), 404, "NotFound")
    assert api.delete(f"/v1/tokens/{body['id']}").json()["state"] == "revoked"


def test_a_user_manages_their_own_tokens_but_not_anothers(login: Login) -> None:
    dave = login("dave", Role.READER)
    login("erin", Role.READER)
    own = dave.post("/v1/tokens", json={"user": "dave"})
    assert own.status_code == 201
    error_of(dave.post("/v1/tokens", json={"user": "erin"}), 403, "AuthorizationFailed")
    assert {t["user"] for t in dave.get("/v1/tokens").json()} == {"dave"}
    erins = login("erin").get("/v1/tokens").json()[0]["id"]
    error_of(dave.delete(f"/v1/tokens/{erins}"), 404, "NotFound")  # another's token is not shown to exist


def test_a_narrowed_token_never_has_more_than_it_was_given(login: Login) -> None:
    login("frank", Role.CONTRIBUTOR)
    login("frank", Role.CONTRIBUTOR, "team-b")
    capped = login("frank", cap=Role.READER)
    assert capped.get("/v1/vms", params={"project": "team-a"}).status_code == 200
    err = error_of(
        capped.post("/v1/vms", json={"name": "x", **CREATE}, params={"project": "team-a"}), 403, "AuthorizationFailed"
    )
    assert err["details"]["needed_role"] == "Contributor"
    only_b = login("frank", only="team-b")
    assert only_b.get("/v1/vms", params={"project": "team-b"}).status_code == 200
    error_of(only_b.get("/v1/vms", params={"project": "team-a"}), 404, "NotFound")
    error_of(capped.post("/v1/tokens", json={"user": "frank"}), 403, "AuthorizationFailed")


# --- roles ------------------------------------------------------------------------------------


def test_a_reader_is_told_the_role_it_needs_and_another_project_is_not_there(login: Login) -> None:
    reader = login("grace", Role.READER)
    err = error_of(
        reader.post("/v1/vms", json={"name": "x", **CREATE}, params={"project": "team-a"}), 403, "AuthorizationFailed"
    )
    assert "Contributor" in err["message"] and err["details"]["needed_role"] == "Contributor"
    hidden = error_of(reader.get("/v1/vms/web1", params={"project": "team-b"}), 404, "NotFound")
    absent = error_of(reader.get("/v1/vms/web1", params={"project": "no-such"}), 404, "NotFound")
    assert hidden["details"]["kind"] == absent["details"]["kind"] == "project"
    assert hidden["message"].replace("team-b", "X") == absent["message"].replace("no-such", "X")
    error_of(reader.get("/v1/hosts"), 403, "AuthorizationFailed")  # hosts are a platform matter
    assert [p["name"] for p in reader.get("/v1/projects").json()] == ["team-a"]


def test_the_prometheus_exposition_needs_a_role_on_the_platform(api: TestClient, login: Login) -> None:
    """It names every project's VMs: a project's Owner may not scrape it, a platform Reader may."""
    anonymous = TestClient(api.app)
    error_of(anonymous.get("/metrics"), 401, "Unauthorized")
    error_of(login("olga", Role.OWNER).get("/metrics"), 403, "AuthorizationFailed")
    scraper = login("prometheus", Role.READER, None)
    answer = scraper.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert api.get("/metrics").status_code == 200  # the admin


def test_a_vm_operator_powers_vms_but_cannot_change_them(api: TestClient, login: Login) -> None:
    finished(api, api.post("/v1/vms", json={"name": "web1", **CREATE}, params={"project": "team-a"}))
    operator = login("heidi", Role.VM_OPERATOR)
    finished(operator, operator.post("/v1/vms/web1/stop", params={"project": "team-a"}))
    finished(operator, operator.post("/v1/vms/web1/start", params={"project": "team-a"}))
    assert operator.get("/v1/vms/web1/console", params={"project": "team-a"}).status_code == 200
    error_of(operator.delete("/v1/vms/web1", params={"project": "team-a"}), 403, "AuthorizationFailed")
    error_of(
        operator.post("/v1/vms/web1/resize", json={"size": "Standard_B2s"}, params={"project": "team-a"}),
        403,
        "AuthorizationFailed",
    )


def test_a_token_with_no_rights_says_so_instead_of_answering_empty_lists(login: Login) -> None:
    nobody = login("ivan")  # no role anywhere
    for path in ("/v1/vms", "/v1/projects", "/v1/sizes", "/v1/operations"):
        err = error_of(nobody.get(path), 403, "AuthorizationFailed")
        assert "no rights" in err["message"]
    assert nobody.get("/v1/me").json() == {"user": "ivan", "token_id": nobody.get("/v1/me").json()["token_id"],
                                           "platform_role": None, "project_roles": {}}  # fmt: skip


def test_project_owners_grant_roles_in_their_project_only(login: Login) -> None:
    owner = login("judy", Role.OWNER)
    login("ken")
    made = owner.post("/v1/roles", json={"user": "ken", "role": "Reader"}, params={"project": "team-a"})
    assert made.status_code == 201, made.text
    assert {(a["user"], a["role"]) for a in owner.get("/v1/roles", params={"project": "team-a"}).json()} >= {
        ("ken", "Reader")
    }
    error_of(
        owner.post("/v1/roles", json={"user": "ken", "role": "Owner"}, params={"project": "team-b"}), 404, "NotFound"
    )
    error_of(owner.post("/v1/platform-roles", json={"user": "ken", "role": "Owner"}), 403, "AuthorizationFailed")
    error_of(
        owner.post("/v1/roles", json={"user": "ken", "role": "King"}, params={"project": "team-a"}),
        400,
        "InvalidInput",
        "role",
    )
    assert owner.delete("/v1/roles", params={"project": "team-a", "user": "ken", "role": "Reader"}).status_code == 200


# --- quotas -----------------------------------------------------------------------------------


def test_twenty_parallel_creates_against_a_quota_of_five_make_exactly_five(
    api: TestClient, platform: Platform, image: str
) -> None:
    platform.projects.create("capped")
    platform.projects.set_quotas("capped", {"vms": 5})
    statuses: list[int] = []
    lock = threading.Lock()

    def create(index: int) -> None:
        response = api.post("/v1/vms", json={"name": f"vm{index}", **CREATE}, params={"project": "capped"})
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [202] * 5 + [409] * 15
    assert len(vm_names(api, "capped")) == 5
    shown = api.get("/v1/projects/capped").json()
    assert {q["quota"]: (q["used"], q["limit"]) for q in shown["quotas"]}["vms"] == (5, 5)


def test_quota_exceeded_names_the_quota_the_ask_the_use_and_the_limit(
    api: TestClient, platform: Platform, image: str
) -> None:
    platform.projects.create("small")
    platform.projects.set_quotas("small", {"vcpus": 2})
    finished(api, api.post("/v1/vms", json={"name": "a", **CREATE}, params={"project": "small"}))
    err = error_of(
        api.post("/v1/vms", json={"name": "b", "size": "Standard_B2s", "image": "img"}, params={"project": "small"}),
        409,
        "QuotaExceeded",
    )
    assert err["details"] | {"unit": ""} == {
        "project": "small",
        "quota": "vcpus",
        "asked": 2,
        "used": 1,
        "limit": 2,
        "unit": "",
    }
    assert vm_names(api, "small") == ["a"]
    # Resize and start from deallocated go through the same check.
    assert api.post("/v1/sizes", json={"name": "Three", "vcpus": 3, "memory": "1G", "disk": "2G"}).status_code == 201
    error_of(
        api.post("/v1/vms/a/resize", json={"size": "Three", "allow_restart": True}, params={"project": "small"}),
        409,
        "QuotaExceeded",
    )
    finished(api, api.post("/v1/vms/a/deallocate", params={"project": "small"}))
    finished(
        api,
        api.post("/v1/vms", json={"name": "c", "size": "Standard_B2s", "image": "img"}, params={"project": "small"}),
    )
    error_of(api.post("/v1/vms/a/start", params={"project": "small"}), 409, "QuotaExceeded")
    used = {q["quota"]: q["used"] for q in api.get("/v1/projects/small").json()["quotas"]}
    assert used["vcpus"] == 2 and used["vms"] == 2


def test_a_scale_out_past_the_instances_quota_is_refused_and_nothing_changes(
    api: TestClient, platform: Platform, image: str
) -> None:
    platform.projects.create("sets")
    platform.projects.set_quotas("sets", {"instances": 2})
    body = {"name": "web", "size": "Standard_B1s", "image": "img", "instances": 3}
    error_of(api.post("/v1/scalesets", json=body, params={"project": "sets"}), 409, "QuotaExceeded")
    assert api.get("/v1/scalesets", params={"project": "sets"}).json() == []
    finished(api, api.post("/v1/scalesets", json={**body, "instances": 2}, params={"project": "sets"}))
    err = error_of(
        api.post("/v1/scalesets/web/scale", json={"instances": 3}, params={"project": "sets"}), 409, "QuotaExceeded"
    )
    assert err["details"]["quota"] == "instances"
    assert api.get("/v1/scalesets/web", params={"project": "sets"}).json()["capacity"] == 2


# --- the audit trail --------------------------------------------------------------------------


def test_the_audit_trail_records_changes_and_refusals_for_the_projects_owners(api: TestClient, login: Login) -> None:
    alice = login("alice", Role.CONTRIBUTOR)
    reader = login("bob", Role.READER)
    owner = login("olga", Role.OWNER)
    finished(alice, alice.post("/v1/vms", json={"name": "web1", **CREATE}, params={"project": "team-a"}))
    reader.delete("/v1/vms/web1", params={"project": "team-a"})
    events = owner.get("/v1/audit", params={"project": "team-a"}).json()
    created = next(e for e in events if e["action"] == "create_vm")
    assert (created["user"], created["resource"], created["outcome"], created["status"]) == (
        "alice",
        "team-a.web1",
        "accepted",
        202,
    )
    assert created["request_id"] and created["address"] and created["token_id"]
    refused = next(e for e in events if e["action"] == "delete_vm")
    assert (refused["user"], refused["outcome"], refused["status"]) == ("bob", "denied", 403)
    assert "Contributor" in refused["detail"]
    assert [e["user"] for e in owner.get("/v1/audit", params={"project": "team-a", "user": "bob"}).json()] == ["bob"]
    assert owner.get("/v1/audit", params={"project": "team-a", "since": "1h"}).json()
    error_of(reader.get("/v1/audit", params={"project": "team-a"}), 403, "AuthorizationFailed")
    error_of(owner.get("/v1/audit/all"), 403, "AuthorizationFailed")
    error_of(
        owner.get("/v1/audit", params={"project": "team-a", "since": "yesterday-ish"}), 400, "InvalidInput", "since"
    )
    assert any(e["project"] == "team-a" for e in api.get("/v1/audit/all").json())
