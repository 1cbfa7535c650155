"""PostgreSQL going away under a running server, for real: the cluster is stopped mid-test.

PostgreSQL only: SQLite has no server to lose. This module has a cluster of its own, so stopping it
cannot disturb the databases of other tests.

Pins: while the database is down the API answers 503 DatabaseUnavailable in flexvm's error shape
with a Retry-After (reads and writes alike), a create refused then leaves no VM and no operation
behind, and once the database is back the same server answers 200 and creates again, without a
restart; a database restarted between two requests goes unnoticed (pool_pre_ping replaces the
connections the stopped server ended).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from flexvm.platform import Platform
from tests.pg import PrivateCluster
from tests.unit.api_helpers import error_of, finished

CREATE = {"name": "web1", "size": "Standard_B1ls", "image": "img"}


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PrivateCluster]:
    cluster = PrivateCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def db_url(own_cluster: PrivateCluster) -> Iterator[str]:
    """Replaces the two-backend ``db_url``: a database on this module's own cluster."""
    own_cluster.create_database("outage")
    try:
        yield own_cluster.url("outage")
    finally:
        if not own_cluster.running:  # a failed test may have left it stopped
            own_cluster.start()
        own_cluster.drop_database("outage")


def test_the_api_answers_503_while_postgresql_is_down_and_recovers_when_it_returns(
    own_cluster: PrivateCluster, platform: Platform, api: TestClient, image: str
) -> None:
    assert api.get("/v1/vms").json() == []
    own_cluster.stop()
    own_cluster.start()
    # A restart between two requests: the pooled connections it ended are replaced unnoticed.
    assert api.get("/v1/vms").status_code == 200

    own_cluster.stop()
    for response in (api.get("/v1/vms"), api.get("/v1/operations"), api.post("/v1/vms", json=CREATE)):
        error = error_of(response, 503, "DatabaseUnavailable")
        assert error["message"].startswith("the database is unavailable (connection failed:"), error
        assert error["message"].endswith("; try again once it is back")
        assert error["details"]["backend"] == "postgresql"
        assert response.headers["retry-after"] == "5"
    assert api.get("/healthz").status_code == 200  # the server itself lives on

    own_cluster.start()
    assert api.get("/v1/vms").json() == []  # the create refused while it was down left nothing
    assert [op for op in api.get("/v1/operations").json() if op["target_name"] == "web1"] == []
    finished(api, api.post("/v1/vms", json=CREATE))
    assert api.get("/v1/vms/web1").json()["power_state"] == "running"
