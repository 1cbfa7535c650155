from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.deps import accepted, named, platform
from flexvm.platform import Platform

router = APIRouter(prefix="/vms", tags=["vm files"])


@router.post("/{name}/snapshots", status_code=202, response_model=schemas.OperationOut)
def create_snapshot(name: str, body: schemas.SnapshotRequest, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.files.snapshot(named("name", name), body.name))


@router.get("/{name}/snapshots", response_model=list[str])
def list_snapshots(name: str, p: Platform = Depends(platform)) -> list[str]:
    return p.files.snapshots(named("name", name))


@router.post("/{name}/snapshots/{snapshot}/revert", status_code=202, response_model=schemas.OperationOut)
def revert_snapshot(name: str, snapshot: str, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.files.revert(named("name", name), snapshot))


@router.delete("/{name}/snapshots/{snapshot}", status_code=202, response_model=schemas.OperationOut)
def delete_snapshot(name: str, snapshot: str, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.files.delete_snapshot(named("name", name), snapshot))


@router.post("/{name}/capture", status_code=202, response_model=schemas.OperationOut)
def capture(name: str, body: schemas.CaptureRequest, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.files.capture(named("name", name), body.image))


@router.post("/{name}/export", status_code=202, response_model=schemas.OperationOut)
def export(name: str, body: schemas.ExportRequest, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.files.export(named("name", name), Path(body.file)))


@router.post("/import", status_code=202, response_model=schemas.OperationOut)
def import_vm(body: schemas.ImportRequest, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.files.import_vm(Path(body.file), body.name, body.size))
