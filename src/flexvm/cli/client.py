"""A small API client: finds the server and its token, and turns error bodies back into FlexvmErrors."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import httpx

from flexvm import errors
from flexvm.config import Settings

# Error codes back to exception classes, so the CLI can react to kinds of failure.
_BY_CODE: dict[str, type[errors.FlexvmError]] = {
    cls.code: cls
    for cls in (
        errors.Conflict,
        errors.AlreadyExists,
        errors.Busy,
        errors.InvalidState,
        errors.CapacityError,
        errors.Unauthorized,
        errors.ImageError,
        errors.HypervisorError,
        errors.HypervisorUnavailable,
        errors.LoadBalancerError,
        errors.OperationFailed,
        errors.OperationTimeout,
        errors.InvalidInput,
        errors.TooLarge,
        errors.NotFound,
    )
}


UPLOAD_ANSWER_SECONDS = 600.0


def rebuild_error(status: int, body: Any) -> errors.FlexvmError:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = error.get("message") or f"the server answered HTTP {status}"
    cls = _BY_CODE.get(error.get("code", ""), errors.FlexvmError)
    err = errors.FlexvmError.__new__(cls)
    errors.FlexvmError.__init__(err, message, details=error.get("details") or {})
    err.status = status
    return err


class ApiClient:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient:
        url = os.environ.get("FLEXVM_URL")
        if not url and settings.server_file.exists():
            url = settings.server_file.read_text().strip()
        url = url or f"http://127.0.0.1:{settings.port}"
        token = os.environ.get("FLEXVM_TOKEN")
        if not token:
            try:
                token = settings.token_file.read_text().strip()
            except PermissionError as err:
                raise errors.Unauthorized(
                    f"cannot read the API token in {settings.token_file} (it is readable by root only); "
                    "run as root or set FLEXVM_TOKEN"
                ) from err
            except FileNotFoundError:
                token = None  # the server has not started yet; the request will say so
        return cls(url, token)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, f"/v1{path}", **kwargs)
        except httpx.TransportError as err:
            raise errors.ServerUnavailable(
                f"cannot reach the flexvm server at {self.url} ({err}). Is it running? "
                "`make up` starts it; by hand: `flexvm serve &`"
            ) from err
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise rebuild_error(response.status_code, body)
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    def upload(self, path: str, content: Iterable[bytes], length: int, **params: Any) -> Any:
        """POST ``length`` bytes streamed from ``content`` (never held whole) as the raw body."""
        return self.request(
            "POST",
            path,
            content=content,
            params={k: v for k, v in params.items() if v is not None},
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            # After the last byte the server checks the disk (qemu-img) before it answers.
            timeout=httpx.Timeout(self._http.timeout.connect, read=UPLOAD_ANSWER_SECONDS),
        )

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def wait(self, operation_id: str, on_update: Any = None, timeout: float = 3600.0) -> dict[str, Any]:
        """Poll an operation until it finishes; ``on_update(op)`` sees every state along the way."""
        deadline = time.monotonic() + timeout
        while True:
            operation: dict[str, Any] = self.get(f"/operations/{operation_id}")
            if on_update is not None:
                on_update(operation)
            if operation["status"] in ("succeeded", "failed", "canceled"):
                return operation
            if time.monotonic() > deadline:
                raise errors.OperationTimeout(f"gave up waiting for operation {operation_id} after {timeout:.0f} s")
            time.sleep(0.3)
