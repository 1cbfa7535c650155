from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query

from flexvm.api import schemas
from flexvm.api.deps import platform
from flexvm.api.hints import operation_error
from flexvm.errors import InvalidInput
from flexvm.model.operation import Operation
from flexvm.platform import Platform

router = APIRouter(prefix="/operations", tags=["operations"])
_ID = re.compile(r"^[0-9a-f-]{1,36}$")


def operation_out(operation: Operation) -> schemas.OperationOut:
    out = schemas.OperationOut.model_validate(operation)
    out.error = operation_error(out.error)
    return out


@router.get("", response_model=list[schemas.OperationOut])
def list_operations(
    limit: int = Query(50, ge=1, le=1000), target: str | None = None, p: Platform = Depends(platform)
) -> list[schemas.OperationOut]:
    return [operation_out(op) for op in p.runner.list(limit=limit, target=target)]


@router.get("/{operation_id}", response_model=schemas.OperationOut)
def show_operation(operation_id: str, p: Platform = Depends(platform)) -> schemas.OperationOut:
    if not _ID.match(operation_id):
        raise InvalidInput("operation_id", f"{operation_id!r} is not an operation id")
    return operation_out(p.runner.get(operation_id))


@router.post("/{operation_id}/cancel", response_model=schemas.OperationOut, status_code=202)
def cancel_operation(operation_id: str, p: Platform = Depends(platform)) -> schemas.OperationOut:
    """Ask a running move, drain, rebalance or scale-set change to stop at its next step and undo."""
    if not _ID.match(operation_id):
        raise InvalidInput("operation_id", f"{operation_id!r} is not an operation id")
    p.runner.cancel(operation_id)
    return operation_out(p.runner.get(operation_id))


servers_router = APIRouter(prefix="/servers", tags=["servers"])


@servers_router.get("", response_model=list[schemas.ServerOut])
def list_servers(p: Platform = Depends(platform)) -> list[schemas.ServerOut]:
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
