"""A small API client: finds the server and its token, and turns error bodies back into FlexvmErrors."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
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
        errors.Forbidden,
        errors.QuotaExceeded,
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


def trusted_ca(settings: Settings) -> Path | None:
    """The CA the CLI trusts for the server's certificate: FLEXVM_CA_FILE (for an operator's own
    certificate), else the one the server made in its home when there is one, else None (httpx's
    default CAs: a certificate from a public CA)."""
    named = os.environ.get("FLEXVM_CA_FILE")
    if named:
        return Path(named)
    return settings.ca_file if settings.ca_file.exists() else None


def _trusting(ca_file: Path) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise errors.FlexvmError(f"cannot load the CA file {ca_file}: {reason}") from err


def _certificate_refusal(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed under an httpx error (it sits a few causes down), if any."""
    seen: BaseException | None = err
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class ApiClient:
    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float = 60.0,
        ca_file: Path | None = None,
        project: str | None = None,
    ) -> None:
        """``ca_file``: the CA an https server's certificate must be signed by (None: httpx's defaults).
        ``project``: sent with every request (routes of a project read it; the others ignore it)."""
        self.url = url.rstrip("/")
        self.ca_file = ca_file
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = True
        if ca_file is not None and self.url.startswith("https:"):
            verify = _trusting(ca_file)
        params = {"project": project} if project else None
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=verify, params=params)

    @classmethod
    def from_settings(cls, settings: Settings, project: str | None = None) -> ApiClient:
        url = os.environ.get("FLEXVM_URL")
        if not url and settings.server_file.exists():
            url = settings.server_file.read_text().strip()
        url = url or f"https://127.0.0.1:{settings.port}"
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
        return cls(url, token, ca_file=trusted_ca(settings), project=project)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, f"/v1{path}", **kwargs)
        except httpx.TransportError as err:
            refused = _certificate_refusal(err)
            if refused is not None:
                trusted = f"the CA in {self.ca_file}" if self.ca_file else "the default CAs"
                raise errors.ServerUnavailable(
                    f"the flexvm server at {self.url} has a certificate that {trusted} does not vouch for "
                    f"({refused.verify_message or refused.reason}); if it serves its own certificate, "
                    "set FLEXVM_CA_FILE to the CA that signed it"
                ) from err
            if isinstance(err, httpx.RemoteProtocolError) and self.url.startswith("http:"):
                # What a server serving HTTPS does to a plain HTTP request: it hangs up.
                raise errors.ServerUnavailable(
                    f"the flexvm server at {self.url} closed the connection ({err}); "
                    "it serves HTTPS unless started with --plain-http: use an https:// URL"
                ) from err
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

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params={k: v for k, v in params.items() if v is not None})

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
