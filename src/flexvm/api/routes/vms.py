from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.deps import accepted, named, platform
from flexvm.model.units import parse_bytes
from flexvm.platform import Platform

router = APIRouter(prefix="/vms", tags=["vms"])


@router.get("", response_model=list[schemas.VmOut])
def list_vms(p: Platform = Depends(platform)) -> list[schemas.VmOut]:
    return [schemas.VmOut.model_validate(vm) for vm in p.vms.list()]


@router.post("", status_code=202, response_model=schemas.OperationOut)
def create_vm(body: schemas.VmCreate, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(
        p.vms.create(
            body.name,
            body.size,
            body.image,
            user_data=body.user_data,
            host=body.host,
            availability_set=body.availability_set,
            policy=body.policy,
            max_size=body.max_size,
        )
    )


@router.get("/{name}", response_model=schemas.VmOut)
def show_vm(name: str, p: Platform = Depends(platform)) -> schemas.VmOut:
    return schemas.VmOut.model_validate(p.vms.get(named("name", name)))


@router.delete("/{name}", status_code=202, response_model=schemas.OperationOut)
def delete_vm(name: str, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.vms.delete(named("name", name)))


@router.post("/{name}/start", status_code=202, response_model=schemas.OperationOut)
def start_vm(name: str, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.vms.start(named("name", name)))


@router.post("/{name}/stop", status_code=202, response_model=schemas.OperationOut)
def stop_vm(name: str, body: schemas.VmStop | None = None, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.vms.stop(named("name", name), force=bool(body and body.force)))


@router.post("/{name}/restart", status_code=202, response_model=schemas.OperationOut)
def restart_vm(name: str, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.vms.restart(named("name", name)))


@router.post("/{name}/deallocate", status_code=202, response_model=schemas.OperationOut)
def deallocate_vm(name: str, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.vms.deallocate(named("name", name)))


@router.post("/{name}/disk/resize", status_code=202, response_model=schemas.OperationOut)
def resize_disk(name: str, body: schemas.DiskResize, p: Platform = Depends(platform)) -> JSONResponse:
    size = parse_bytes(body.size, "size", default_unit="G")
    return accepted(p.vms.resize_disk(named("name", name), size))


@router.get("/{name}/console", response_model=schemas.ConsoleOut)
def console(name: str, offset: int = Query(0, ge=0), p: Platform = Depends(platform)) -> schemas.ConsoleOut:
    chunk = p.vms.console(named("name", name), offset)
    return schemas.ConsoleOut(text=chunk.text, next_offset=chunk.next_offset)


@router.post(
    "/{name}/resize",
    status_code=202,
    response_model=schemas.OperationOut,
    responses={200: {"model": schemas.ResizePlanOut, "description": "the plan (dry run)"}},
)
def resize_vm(name: str, body: schemas.ResizeRequest, p: Platform = Depends(platform)) -> JSONResponse:
    named("name", name)
    if body.dry_run:
        plan = p.resizer.plan(name, body.size, allow_restart=body.allow_restart, force=body.force)
        return JSONResponse(schemas.ResizePlanOut(**dataclasses.asdict(plan)).model_dump(mode="json"))
    return accepted(p.resizer.resize(name, body.size, allow_restart=body.allow_restart, force=body.force))


@router.post(
    "/{name}/migrate",
    status_code=202,
    response_model=schemas.OperationOut,
    responses={200: {"model": schemas.MovePlanOut, "description": "the plan (dry run)"}},
)
def migrate_vm(name: str, body: schemas.MigrateRequest, p: Platform = Depends(platform)) -> JSONResponse:
    named("name", name)
    if body.to is not None:
        named("to", body.to)
    if body.dry_run:
        plan = p.mover.plan(name, body.to, cold=body.cold)
        return JSONResponse(schemas.MovePlanOut(**dataclasses.asdict(plan)).model_dump(mode="json"))
    return accepted(p.mover.migrate(name, body.to, cold=body.cold))
