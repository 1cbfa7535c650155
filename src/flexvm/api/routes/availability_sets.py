from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from flexvm.api import schemas
from flexvm.api.access import Scope, project_access
from flexvm.api.deps import platform
from flexvm.api.params import Name
from flexvm.model.access import Right
from flexvm.platform import Platform

router = APIRouter(prefix="/availability-sets", tags=["availability sets"])


def _out(p: Platform, name: str) -> schemas.AvailabilitySetOut:
    layout = p.availability_sets.layout(name)
    return schemas.AvailabilitySetOut(
        name=layout.availability_set.name,
        fault_domains=layout.availability_set.fault_domains,
        created_at=layout.availability_set.created_at,
        layout=layout.domains,
    )


@router.get("", response_model=list[schemas.AvailabilitySetOut])
def list_sets(
    scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)
) -> list[schemas.AvailabilitySetOut]:
    return [_out(p, s.name) for s in p.availability_sets.list() if scope.owns(s.name)]


@router.post("", status_code=201, response_model=schemas.AvailabilitySetOut)
def create_set(
    body: schemas.AvailabilitySetCreate, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> schemas.AvailabilitySetOut:
    created = p.availability_sets.create(scope.key(body.name), body.fault_domains)
    return _out(p, created.name)


@router.get("/{name}", response_model=schemas.AvailabilitySetOut)
def show_set(
    name: Name, scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)
) -> schemas.AvailabilitySetOut:
    return _out(p, scope.key(name))


@router.delete("/{name}", status_code=204)
def delete_set(name: Name, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)) -> Response:
    p.availability_sets.delete(scope.key(name))
    return Response(status_code=204)
