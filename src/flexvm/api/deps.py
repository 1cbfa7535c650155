"""Shared pieces of the routes: the platform, accepted-operation responses, edge name checks."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.access import Scope
from flexvm.errors import Forbidden
from flexvm.model.names import check_name
from flexvm.model.operation import Operation
from flexvm.model.projects import DEFAULT_PROJECT, image_key
from flexvm.platform import Platform

PREFIX = "/v1"


def platform(request: Request) -> Platform:
    return request.app.state.platform  # type: ignore[no-any-return]


def accepted(operation: Operation) -> JSONResponse:
    """202 with the operation, and where to poll it."""
    body = schemas.OperationOut.model_validate(operation).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": f"{PREFIX}/operations/{operation.id}"})


def no_host_pin(scope: Scope, host: str | None, field: str = "host") -> None:
    """Naming a host is a platform matter: only the admin places VMs by hand."""
    if host is not None and not scope.caller.is_admin:
        raise Forbidden(
            f"{field}: choosing the host is a platform matter (the admin's); leave it out and flexvm places the VM",
            details={"field": field, "needed_role": "Owner", "scope": "platform"},
        )


def image_in_scope(p: Platform, scope: Scope, name: str, field: str = "image") -> str:
    """The key of the image a request names: the project's own private image of that name if it
    has one, else the public image."""
    check_name(field, name)
    private = image_key(scope.project or DEFAULT_PROJECT, name)
    return private if p.images.find(private) is not None else name


def named(kind: str, name: str) -> str:
    """Names in paths pass the same rule as names in bodies, before anything looks them up."""
    return check_name(kind, name)
