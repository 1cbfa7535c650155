"""Shared pieces of the routes: the platform, accepted-operation responses, edge name checks."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.model.names import check_name
from flexvm.model.operation import Operation
from flexvm.platform import Platform

PREFIX = "/v1"


def platform(request: Request) -> Platform:
    return request.app.state.platform  # type: ignore[no-any-return]


def accepted(operation: Operation) -> JSONResponse:
    """202 with the operation, and where to poll it."""
    body = schemas.OperationOut.model_validate(operation).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": f"{PREFIX}/operations/{operation.id}"})


def named(kind: str, name: str) -> str:
    """Names in paths pass the same rule as names in bodies, before anything looks them up."""
    return check_name(kind, name)
