"""Driving the API in-process: an error answer checked for Azure's shape, an operation waited for."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient


def error_of(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The error of an answer that must be ``status`` with ``code`` (and name ``field``, if given)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    if field is not None:
        assert body["error"]["details"]["field"] == field, body
    return body["error"]


def finished(api: TestClient, response: Any, status: str = "succeeded", timeout: float = 30.0) -> dict[str, Any]:
    """Follow a 202's Location until the operation ends; it must end ``status``."""
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    assert location == f"/v1/operations/{response.json()['id']}"
    deadline = time.monotonic() + timeout
    while (operation := api.get(location).json())["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, f"operation still {operation['status']}"
        time.sleep(0.01)
    assert operation["status"] == status, (operation["error"], operation["message"])
    return operation
