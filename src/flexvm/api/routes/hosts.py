from __future__ import annotations

from fastapi import APIRouter, Depends

from flexvm.api import schemas
from flexvm.api.deps import named, platform
from flexvm.platform import Platform

router = APIRouter(prefix="/hosts", tags=["hosts"])


@router.get("", response_model=list[schemas.HostOut])
def list_hosts(p: Platform = Depends(platform)) -> list[schemas.HostOut]:
    return [schemas.HostOut.model_validate(host) for host in p.hosts.list()]


@router.get("/{name}", response_model=schemas.HostDetail)
def show_host(name: str, p: Platform = Depends(platform)) -> schemas.HostDetail:
    detail = p.hosts.detail(named("name", name))
    base = schemas.HostOut.model_validate(detail.host).model_dump()
    return schemas.HostDetail(
        **base,
        vms=detail.vms,
        unmanaged_guests=detail.unmanaged_guests,
        vcpus_allocated=detail.allocated.vcpus,
        memory_mib_allocated=detail.allocated.memory_mib,
        disk_bytes_allocated=detail.allocated.disk_bytes,
    )


@router.post("/{name}/probe", response_model=schemas.HostOut)
def probe_host(name: str, p: Platform = Depends(platform)) -> schemas.HostOut:
    return schemas.HostOut.model_validate(p.hosts.reprobe(named("name", name)))
