"""Fixtures shared by every tier: a database on each backend, a platform on the fake driver, and an
API client for it.

Every test that uses ``db_url`` (through ``fake_settings`` and ``platform``, or directly) runs
twice: on SQLite (``[sqlite]``) and on a private PostgreSQL 15 (``[postgresql]``, see tests/pg.py),
each time with a database of its own, copied from one migrated once per session (the migrations'
own tests start from ``empty_db_url``). ``-k sqlite`` or ``-k postgresql`` picks one backend.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flexvm.api.app import create_app
from flexvm.config import Settings
from flexvm.drivers import connect
from flexvm.drivers.fake import FakeDriver
from flexvm.platform import Platform
from flexvm.store.db import open_database
from tests.helpers import wait_for
from tests.pg import DatabaseSupply, PrivateCluster

TOKEN = "test-token"
BACKENDS = ("sqlite", "postgresql")
TEMPLATE = "flexvm_template"  # migrated once per session; each test's database is a copy of it


def wait_operation(platform: Platform, operation_id: str, timeout: float = 30.0):  # noqa: ANN201
    return platform.runner.wait(operation_id, timeout)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PrivateCluster]:
    """The session's private PostgreSQL, started on first use, with the migrated template database.
    If it cannot start, every PostgreSQL test errors, saying why: nothing is skipped."""
    cluster = PrivateCluster.create()
    try:
        cluster.create_database(TEMPLATE)
        open_database(cluster.url(TEMPLATE)).engine.dispose()  # a template must have no sessions left
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_databases(pg_cluster: PrivateCluster) -> Iterator[DatabaseSupply]:
    supply = DatabaseSupply(pg_cluster, TEMPLATE)
    try:
        yield supply
    finally:
        supply.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file to copy: migrating from empty costs ~0.2 s, a copy ~1 ms."""
    path = tmp_path_factory.mktemp("sqlite-template") / "flexvm.db"
    open_database(f"sqlite:///{path}").engine.dispose()  # the last connection folds the WAL back in
    return path


@contextmanager
def fresh_database(request: pytest.FixtureRequest, directory: Path, *, migrated: bool = True) -> Iterator[str]:
    """The URL of a database no other test uses, on the backend ``request.param`` names: a copy
    of the migrated template, or with ``migrated=False`` one with no schema yet.

    SQLite: a file ``flexvm.db`` in ``directory``. PostgreSQL: a database of the session's
    cluster, dropped after.
    """
    if request.param == "sqlite":
        path = directory / "flexvm.db"
        if migrated:
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    assert request.param == "postgresql", request.param
    cluster: PrivateCluster = request.getfixturevalue("pg_cluster")
    if migrated:
        supply: DatabaseSupply = request.getfixturevalue("pg_databases")
        name = supply.take()
        release = supply.give_back
    else:
        name = f"test_{uuid.uuid4().hex[:16]}"
        cluster.create_database(name)
        release = cluster.drop_database
    try:
        yield cluster.url(name)
    finally:
        release(name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, on each backend in turn."""
    with fresh_database(request, tmp_path / "home") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Like ``db_url``, but with no schema at all yet (for the migrations' own tests)."""
    with fresh_database(request, tmp_path / "home", migrated=False) as url:
        yield url


@pytest.fixture
def fake_uri() -> str:
    """A fresh in-memory host for each test."""
    return f"fake://host-{uuid.uuid4().hex[:8]}?cpus=4&memory_mib=8192&disk_gib=100"


@pytest.fixture
def fake_settings(tmp_path: Path, fake_uri: str, db_url: str) -> Settings:
    return Settings(home=tmp_path / "home", db_url=db_url, local_uri=fake_uri, ready_timeout=5.0, stop_timeout=2.0)


@pytest.fixture
def platform(fake_settings: Settings) -> Iterator[Platform]:
    """A started platform whose only host is a fake one."""
    p = Platform.open(fake_settings, connect)
    p.collect_metrics = False  # tests drive the collector by hand
    p.run_scaling = False  # and the scaling loop
    p.start()
    yield p
    close_platform(p)


def close_platform(platform: Platform, timeout: float = 30.0) -> None:
    """Let the operations still running end, then close. Closing does not stop them, and a thread
    that outlives its test writes into a database that is gone (dropped, on PostgreSQL) or, worse,
    into the next test's."""
    wait_for(lambda: not platform.runner.running(), timeout, "the platform's operations to end", interval=0.01)
    platform.close()


@pytest.fixture
def fake_host(platform: Platform) -> FakeDriver:
    driver = platform.drivers.for_uri(platform.settings.local_uri)
    assert isinstance(driver, FakeDriver)
    return driver


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A real (tiny) qcow2, so image import runs its true checks."""
    path = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


@pytest.fixture
def image(platform: Platform, small_disk: Path) -> str:
    """An image named 'img' whose guests print the tiny image's readiness line (the fake does)."""
    op = platform.images.import_image("img", small_disk, ready_marker="flexvm: ready")
    done = wait_operation(platform, op.id)
    assert done.status.value == "succeeded", done.error
    return "img"


@pytest.fixture
def api(platform: Platform) -> Iterator[TestClient]:
    with TestClient(create_app(platform, TOKEN), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With FLEXVM_FORBID_SKIPS=1 (the README's test command), any skip fails the run:
    on a machine like CI's the default suite must run everything, TCG standing in for KVM."""
    import os

    if not os.environ.get("FLEXVM_FORBID_SKIPS") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reasons = sorted({str(getattr(r, "longrepr", ""))[:200] for r in skipped})
        print(f"\n{len(skipped)} test(s) skipped, which this suite forbids here:\n  " + "\n  ".join(reasons))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
