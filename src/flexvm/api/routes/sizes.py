from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from flexvm.api import schemas
from flexvm.api.access import Scope, any_role, platform_access
from flexvm.api.deps import platform
from flexvm.api.params import SizeName
from flexvm.compute.sizes import SizeFit
from flexvm.model.access import Right
from flexvm.model.names import check_size_name
from flexvm.model.units import parse_bytes, parse_mib
from flexvm.platform import Platform

router = APIRouter(prefix="/sizes", tags=["sizes"])


def size_out(fit: SizeFit) -> schemas.SizeOut:
    return schemas.SizeOut(
        name=fit.size.name,
        vcpus=fit.size.vcpus,
        memory_mib=fit.size.memory_mib,
        disk_bytes=fit.size.disk_bytes,
        family=fit.size.family,
        builtin=fit.size.builtin,
        fits_now=fit.fits_now,
    )


@router.get("", response_model=list[schemas.SizeOut])
def list_sizes(scope: Scope = any_role(), p: Platform = Depends(platform)) -> list[schemas.SizeOut]:
    return [size_out(fit) for fit in p.sizes.list_with_fit()]


@router.post("", status_code=201, response_model=schemas.SizeOut)
def create_size(
    body: schemas.SizeCreate, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> schemas.SizeOut:
    memory = parse_mib(body.memory, "memory")
    disk = parse_bytes(body.disk, "disk", default_unit="G")
    size = p.sizes.create(body.name, body.vcpus, memory, disk, body.family)
    return size_out(p.sizes.fit(size.name))


@router.delete("/{name}", status_code=204)
def delete_size(
    name: SizeName, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> Response:
    p.sizes.delete(check_size_name("name", name))
    return Response(status_code=204)
