from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.access import Scope, project_access
from flexvm.api.deps import accepted, image_in_scope, named, no_host_pin, platform
from flexvm.api.params import Name
from flexvm.model.access import Right
from flexvm.model.units import parse_bytes
from flexvm.platform import Platform

router = APIRouter(prefix="/vms", tags=["vms"])


@router.get("", response_model=list[schemas.VmOut])
def list_vms(scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)) -> list[schemas.VmOut]:
    return [schemas.VmOut.model_validate(vm) for vm in p.vms.list() if scope.owns(vm.name)]


@router.post("", status_code=202, response_model=schemas.OperationOut)
def create_vm(
    body: schemas.VmCreate, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    no_host_pin(scope, body.host)
    storage = named("storage", body.storage) if body.storage is not None else None
    return accepted(
        p.vms.create(
            scope.key(body.name),
            body.size,
            image_in_scope(p, scope, body.image),
            user_data=body.user_data,
            host=body.host,
            availability_set=scope.key(body.availability_set, "availability_set") if body.availability_set else None,
            policy=body.policy,
            max_size=body.max_size,
            storage=storage,
            ha=body.ha,
            ha_priority=body.ha_priority,
        )
    )


@router.patch("/{name}", response_model=schemas.VmOut)
def update_vm(
    name: Name, body: schemas.VmUpdate, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> schemas.VmOut:
    return schemas.VmOut.model_validate(p.vms.set_ha(scope.key(name), body.ha, body.ha_priority))


@router.get("/{name}", response_model=schemas.VmOut)
def show_vm(name: Name, scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)) -> schemas.VmOut:
    return schemas.VmOut.model_validate(p.vms.get(scope.key(name)))


@router.delete("/{name}", status_code=202, response_model=schemas.OperationOut)
def delete_vm(name: Name, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.vms.delete(scope.key(name)))


@router.post("/{name}/start", status_code=202, response_model=schemas.OperationOut)
def start_vm(name: Name, scope: Scope = project_access(Right.OPERATE), p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.vms.start(scope.key(name)))


@router.post("/{name}/stop", status_code=202, response_model=schemas.OperationOut)
def stop_vm(
    name: Name,
    body: schemas.VmStop | None = None,
    scope: Scope = project_access(Right.OPERATE),
    p: Platform = Depends(platform),
) -> JSONResponse:
    return accepted(p.vms.stop(scope.key(name), force=bool(body and body.force)))


@router.post("/{name}/restart", status_code=202, response_model=schemas.OperationOut)
def restart_vm(
    name: Name, scope: Scope = project_access(Right.OPERATE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.vms.restart(scope.key(name)))


@router.post("/{name}/deallocate", status_code=202, response_model=schemas.OperationOut)
def deallocate_vm(
    name: Name, scope: Scope = project_access(Right.OPERATE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.vms.deallocate(scope.key(name)))


@router.post("/{name}/disk/resize", status_code=202, response_model=schemas.OperationOut)
def resize_disk(
    name: Name, body: schemas.DiskResize, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    size = parse_bytes(body.size, "size", default_unit="G")
    return accepted(p.vms.resize_disk(scope.key(name), size))


@router.get("/{name}/console", response_model=schemas.ConsoleOut)
def console(
    name: Name,
    offset: int = Query(0, ge=0),
    scope: Scope = project_access(Right.OPERATE),
    p: Platform = Depends(platform),
) -> schemas.ConsoleOut:
    chunk = p.vms.console(scope.key(name), offset)
    return schemas.ConsoleOut(text=chunk.text, next_offset=chunk.next_offset)


@router.post(
    "/{name}/resize",
    status_code=202,
    response_model=schemas.OperationOut,
    responses={200: {"model": schemas.ResizePlanOut, "description": "the plan (dry run)"}},
)
def resize_vm(
    name: Name,
    body: schemas.ResizeRequest,
    scope: Scope = project_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> JSONResponse:
    key = scope.key(name)
    if body.dry_run:
        plan = p.resizer.plan(key, body.size, allow_restart=body.allow_restart, force=body.force)
        return JSONResponse(schemas.ResizePlanOut(**dataclasses.asdict(plan)).model_dump(mode="json"))
    return accepted(p.resizer.resize(key, body.size, allow_restart=body.allow_restart, force=body.force))


@router.post(
    "/{name}/migrate",
    status_code=202,
    response_model=schemas.OperationOut,
    responses={200: {"model": schemas.MovePlanOut, "description": "the plan (dry run)"}},
)
def migrate_vm(
    name: Name,
    body: schemas.MigrateRequest,
    scope: Scope = project_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> JSONResponse:
    key = scope.key(name)
    if body.to is not None:
        named("to", body.to)
        no_host_pin(scope, body.to, "to")
    if body.dry_run:
        plan = p.mover.plan(key, body.to, cold=body.cold)
        return JSONResponse(schemas.MovePlanOut(**dataclasses.asdict(plan)).model_dump(mode="json"))
    return accepted(p.mover.migrate(key, body.to, cold=body.cold))
