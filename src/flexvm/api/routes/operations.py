from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query

from flexvm.api import schemas
from flexvm.api.access import Scope, any_role, platform_access, project_access
from flexvm.api.deps import platform
from flexvm.api.hints import operation_error
from flexvm.api.params import NAME_SCHEMA, OPERATION_ID_PATTERN, OperationId
from flexvm.errors import Forbidden, InvalidInput, NotFound
from flexvm.model.access import Right
from flexvm.model.operation import Operation
from flexvm.model.projects import project_of_target
from flexvm.platform import Platform

router = APIRouter(prefix="/operations", tags=["operations"])
_ID = re.compile(OPERATION_ID_PATTERN)


def operation_out(operation: Operation) -> schemas.OperationOut:
    out = schemas.OperationOut.model_validate(operation)
    out.error = operation_error(out.error)
    return out


@router.get("", response_model=list[schemas.OperationOut])
def list_operations(
    limit: int = Query(50, ge=1, le=1000),
    target: str | None = Query(None, json_schema_extra=NAME_SCHEMA),
    scope: Scope = project_access(Right.READ),
    p: Platform = Depends(platform),
) -> list[schemas.OperationOut]:
    """The project's operations, newest first; for a platform role also the platform's (hosts, pool)."""
    key = scope.key(target, "target") if target else None
    with_platform = scope.caller.platform_role is not None
    return [
        operation_out(op)
        for op in p.runner.list(limit=limit, target=key, project=scope.project, with_platform=with_platform)
    ]


def _visible(scope: Scope, operation: Operation, right: Right) -> Operation:
    """An operation of a project the caller cannot see is not found; a platform one needs a
    platform role to see and the admin to cancel."""
    project = project_of_target(operation.target_kind, operation.target_name)
    allowed = (
        scope.caller.may(project, right)
        if project is not None
        else scope.caller.platform_role is not None and (right is Right.READ or scope.caller.is_admin)
    )
    if not allowed:
        seen = scope.caller.sees(project) if project is not None else scope.caller.platform_role is not None
        if not seen:
            raise NotFound("operation", operation.id)
        raise Forbidden(
            f"cancelling operation {operation.id} needs the Contributor role on its project"
            if project is not None
            else f"cancelling platform operation {operation.id} needs the admin",
            details={"needed_role": "Contributor" if project else "Owner"},
        )
    return operation


@router.get("/{operation_id}", response_model=schemas.OperationOut)
def show_operation(
    operation_id: OperationId, scope: Scope = any_role(), p: Platform = Depends(platform)
) -> schemas.OperationOut:
    if not _ID.match(operation_id):
        raise InvalidInput("operation_id", f"{operation_id!r} is not an operation id")
    return operation_out(_visible(scope, p.runner.get(operation_id), Right.READ))


@router.post("/{operation_id}/cancel", response_model=schemas.OperationOut, status_code=202)
def cancel_operation(
    operation_id: OperationId, scope: Scope = any_role(), p: Platform = Depends(platform)
) -> schemas.OperationOut:
    """Ask a running move, drain, rebalance, scale-set change or maintenance run to stop at its next step and undo."""
    if not _ID.match(operation_id):
        raise InvalidInput("operation_id", f"{operation_id!r} is not an operation id")
    _visible(scope, p.runner.get(operation_id), Right.CHANGE)
    p.runner.cancel(operation_id)
    return operation_out(p.runner.get(operation_id))


servers_router = APIRouter(prefix="/servers", tags=["servers"])


@servers_router.get("", response_model=list[schemas.ServerOut])
def list_servers(
    scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)
) -> list[schemas.ServerOut]:
    """The flexvm servers sharing this database: which live, which leads, what each runs."""
    return [
        schemas.ServerOut(
            id=s.server.id,
            hostname=s.server.hostname,
            pid=s.server.pid,
            url=s.server.url,
            version=s.server.version,
            state=s.state,
            leader=s.leader,
            started_at=s.server.started_at,
            heartbeat=s.server.heartbeat,
            operations=s.operations,
        )
        for s in p.engine.server_statuses()
    ]
