from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.access import Scope, project_access
from flexvm.api.deps import accepted, platform
from flexvm.api.params import Name
from flexvm.model.access import Right
from flexvm.model.projects import image_key
from flexvm.platform import Platform

router = APIRouter(prefix="/vms", tags=["vm files"])


@router.post("/{name}/snapshots", status_code=202, response_model=schemas.OperationOut)
def create_snapshot(
    name: Name,
    body: schemas.SnapshotRequest,
    scope: Scope = project_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> JSONResponse:
    return accepted(p.files.snapshot(scope.key(name), body.name))


@router.get("/{name}/snapshots", response_model=list[str])
def list_snapshots(name: Name, scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)) -> list[str]:
    return p.files.snapshots(scope.key(name))


@router.post("/{name}/snapshots/{snapshot}/revert", status_code=202, response_model=schemas.OperationOut)
def revert_snapshot(
    name: Name, snapshot: Name, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.files.revert(scope.key(name), snapshot))


@router.delete("/{name}/snapshots/{snapshot}", status_code=202, response_model=schemas.OperationOut)
def delete_snapshot(
    name: Name, snapshot: Name, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.files.delete_snapshot(scope.key(name), snapshot))


@router.post("/{name}/capture", status_code=202, response_model=schemas.OperationOut)
def capture(
    name: Name,
    body: schemas.CaptureRequest,
    scope: Scope = project_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> JSONResponse:
    return accepted(p.files.capture(scope.key(name), image_key(scope.project, body.image)))


@router.post("/{name}/export", status_code=202, response_model=schemas.OperationOut)
def export(
    name: Name,
    body: schemas.ExportRequest,
    scope: Scope = project_access(Right.CHANGE, admin=True),
    p: Platform = Depends(platform),
) -> JSONResponse:
    return accepted(p.files.export(scope.key(name), Path(body.file)))


@router.post("/import", status_code=202, response_model=schemas.OperationOut)
def import_vm(
    body: schemas.ImportRequest,
    scope: Scope = project_access(Right.CHANGE, admin=True),
    p: Platform = Depends(platform),
) -> JSONResponse:
    return accepted(p.files.import_vm(Path(body.file), body.name, body.size, project=scope.project or "default"))
