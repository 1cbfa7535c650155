from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.access import Scope, platform_access
from flexvm.api.deps import accepted, named, platform
from flexvm.api.params import Name
from flexvm.api.routes.operations import operation_out
from flexvm.compute.drain import MovesPlan
from flexvm.compute.hosts import HostChanges, HostRequest
from flexvm.model.access import Right
from flexvm.model.host import FenceAgent
from flexvm.model.units import parse_mib
from flexvm.platform import Platform

router = APIRouter(prefix="/hosts", tags=["hosts"])


def _mib(value: str | int | None, field: str) -> int | None:
    return None if value is None else parse_mib(value, field)


def _changes(body: schemas.HostSettings) -> HostChanges:
    return HostChanges(
        cpu_ratio=body.cpu_ratio,
        ram_ratio=body.ram_ratio,
        disk_ratio=body.disk_ratio,
        fault_domain=body.fault_domain,
        advertised_cpus=body.cpus,
        advertised_memory_mib=_mib(body.memory, "memory"),
        reserved_memory_mib=_mib(body.reserved_memory, "reserved_memory"),
        network=body.network,
        bridge=body.bridge,
        fence_agent=None if body.fence_agent is None else FenceAgent(body.fence_agent),
        fence_options=body.fence_options,
    )


def _detail(p: Platform, name: str) -> schemas.HostDetail:
    detail = p.hosts.detail(name)
    base = schemas.HostOut.model_validate(detail.host).model_dump()
    fence = p.failover.last_fence(name)
    return schemas.HostDetail(
        **base,
        last_fence=None if fence is None else operation_out(fence),
        vms=detail.vms,
        unmanaged_guests=detail.unmanaged_guests,
        leftovers=detail.leftovers,
        vcpus_allocated=detail.allocated.vcpus,
        memory_mib_allocated=detail.allocated.memory_mib,
        disk_bytes_allocated=detail.allocated.disk_bytes,
    )


@router.get("", response_model=list[schemas.HostOut])
def list_hosts(scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)) -> list[schemas.HostOut]:
    return [schemas.HostOut.model_validate(host) for host in p.hosts.list()]


@router.post("", status_code=202, response_model=schemas.OperationOut)
def add_host(
    body: schemas.HostAdd, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.hosts.add(HostRequest(body.name, body.uri, _changes(body))))


@router.get("/{name}", response_model=schemas.HostDetail)
def show_host(
    name: Name, scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)
) -> schemas.HostDetail:
    return _detail(p, named("name", name))


@router.patch("/{name}", response_model=schemas.HostDetail)
def update_host(
    name: Name,
    body: schemas.HostSettings,
    scope: Scope = platform_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> schemas.HostDetail:
    p.hosts.update(named("name", name), _changes(body))
    return _detail(p, name)


@router.delete("/{name}", status_code=204)
def remove_host(name: Name, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)) -> Response:
    p.hosts.remove(named("name", name))
    return Response(status_code=204)


@router.post("/{name}/probe", response_model=schemas.HostOut)
def probe_host(
    name: Name, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> schemas.HostOut:
    return schemas.HostOut.model_validate(p.hosts.reprobe(named("name", name)))


def moves_out(plan: MovesPlan) -> schemas.MovesPlanOut:
    return schemas.MovesPlanOut(**{**dataclasses.asdict(plan), "moves": [dataclasses.asdict(m) for m in plan.moves]})


@router.post(
    "/{name}/drain",
    status_code=202,
    response_model=schemas.OperationOut,
    responses={200: {"model": schemas.MovesPlanOut, "description": "the plan (dry run)"}},
)
def drain_host(
    name: Name,
    body: schemas.DrainRequest,
    scope: Scope = platform_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> JSONResponse:
    named("name", name)
    if body.dry_run:
        return JSONResponse(moves_out(p.drains.plan_drain(name, body.parallel)).model_dump(mode="json"))
    return accepted(p.drains.drain(name, body.parallel))


@router.post("/{name}/undrain", response_model=schemas.HostDetail)
def undrain_host(
    name: Name, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> schemas.HostDetail:
    p.drains.undrain(named("name", name))
    return _detail(p, name)


@router.post("/{name}/fence", status_code=202, response_model=schemas.OperationOut)
def fence_host(
    name: Name, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    """Fence a failed host by its agent now (a failure held as a network fault, a fence that failed)."""
    return accepted(p.failover.fence(named("name", name)))


@router.post("/{name}/fence-confirm", status_code=202, response_model=schemas.OperationOut)
def confirm_fence(
    name: Name, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    """The caller has checked that the machine is off: it is fenced, and its HA VMs start elsewhere."""
    return accepted(p.failover.fence(named("name", name), confirmed_by=scope.caller.user))
