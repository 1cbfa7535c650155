"""Fixtures shared by every tier: a platform on the fake driver, and an API client for it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flexvm.api.app import create_app
from flexvm.config import Settings
from flexvm.drivers import connect
from flexvm.drivers.fake import FakeDriver
from flexvm.platform import Platform

TOKEN = "test-token"


def wait_operation(platform: Platform, operation_id: str, timeout: float = 30.0):  # noqa: ANN201
    return platform.runner.wait(operation_id, timeout)


@pytest.fixture
def fake_uri() -> str:
    """A fresh in-memory host for each test."""
    return f"fake://host-{uuid.uuid4().hex[:8]}?cpus=4&memory_mib=8192&disk_gib=100"


@pytest.fixture
def fake_settings(tmp_path: Path, fake_uri: str) -> Settings:
    home = tmp_path / "home"
    return Settings(
        home=home, db_url=f"sqlite:///{home / 'flexvm.db'}", local_uri=fake_uri, ready_timeout=5.0, stop_timeout=2.0
    )


@pytest.fixture
def platform(fake_settings: Settings) -> Iterator[Platform]:
    """A started platform whose only host is a fake one."""
    p = Platform.open(fake_settings, connect)
    p.collect_metrics = False  # tests drive the collector by hand
    p.run_scaling = False  # and the scaling loop
    p.start()
    yield p
    p.close()


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
