"""Settings read from the environment: defaults, and a bad value named by its variable."""

from __future__ import annotations

import pytest

from flexvm.config import DEFAULT_PORT, Settings
from flexvm.errors import InvalidInput


def test_defaults_and_the_lease() -> None:
    settings = Settings.from_env({"FLEXVM_HOME": "/srv/flexvm"})
    assert (settings.port, settings.lease_seconds, settings.takeover_poll_seconds) == (DEFAULT_PORT, 15.0, 1.0)
    assert settings.db_url == "sqlite:////srv/flexvm/flexvm.db"
    assert Settings.from_env({"FLEXVM_LEASE_SECONDS": "3", "FLEXVM_PORT": "8471"}).lease_seconds == 3.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLEXVM_LEASE_SECONDS", "0"),
        ("FLEXVM_LEASE_SECONDS", "-5"),
        ("FLEXVM_LEASE_SECONDS", "soon"),
        ("FLEXVM_READY_TIMEOUT", "nan"),
        ("FLEXVM_TAKEOVER_POLL_SECONDS", "inf"),
        ("FLEXVM_PORT", "http"),
        ("FLEXVM_PORT", "70000"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(name: str, value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Settings.from_env({name: value})
    assert caught.value.field == name and repr(value) in caught.value.message


def test_the_upload_limit() -> None:
    assert Settings.from_env({}).upload_max_bytes == 20 * 1024**3
    assert Settings.from_env({"FLEXVM_UPLOAD_MAX": "512M"}).upload_max_bytes == 512 * 1024**2
    for bad in ("0", "lots", "-1G"):
        with pytest.raises(InvalidInput) as caught:
            Settings.from_env({"FLEXVM_UPLOAD_MAX": bad})
        assert caught.value.field == "FLEXVM_UPLOAD_MAX"
