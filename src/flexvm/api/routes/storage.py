"""Shared storage: the admin declares it (it is the physical side of the platform); anyone with a
role may list it, to choose it for a VM."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from flexvm.api import schemas
from flexvm.api.access import Scope, any_role, platform_access
from flexvm.api.deps import named, platform
from flexvm.api.params import Name
from flexvm.compute.storage import StorageReport
from flexvm.model.access import Right
from flexvm.platform import Platform

router = APIRouter(prefix="/storage", tags=["storage"])


def _out(report: StorageReport) -> schemas.StorageOut:
    return schemas.StorageOut(
        name=report.storage.name, path=report.storage.path, hosts=report.hosts, skipped=report.skipped, vms=report.vms
    )


@router.get("", response_model=list[schemas.StorageOut])
def list_storage(scope: Scope = any_role(), p: Platform = Depends(platform)) -> list[schemas.StorageOut]:
    return [schemas.StorageOut(name=s.name, path=s.path) for s in p.storage.list()]


@router.post("", status_code=201, response_model=schemas.StorageOut)
def add_storage(
    body: schemas.StorageAdd, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> schemas.StorageOut:
    return _out(p.storage.add(body.name, body.path))


@router.get("/{name}", response_model=schemas.StorageOut)
def show_storage(
    name: Name, scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)
) -> schemas.StorageOut:
    """Checked from every host as it is asked (the VMs listed are the whole platform's)."""
    return _out(p.storage.show(named("name", name)))


@router.delete("/{name}", status_code=204)
def remove_storage(
    name: Name, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> Response:
    p.storage.remove(named("name", name))
    return Response(status_code=204)
