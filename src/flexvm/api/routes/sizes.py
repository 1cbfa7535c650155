from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from flexvm.api import schemas
from flexvm.api.deps import platform
from flexvm.errors import InvalidInput
from flexvm.model.names import check_size_name
from flexvm.model.units import MIB, parse_bytes
from flexvm.platform import Platform

router = APIRouter(prefix="/sizes", tags=["sizes"])


@router.get("", response_model=list[schemas.SizeOut])
def list_sizes(p: Platform = Depends(platform)) -> list[schemas.SizeOut]:
    return [
        schemas.SizeOut(
            name=f.size.name,
            vcpus=f.size.vcpus,
            memory_mib=f.size.memory_mib,
            disk_bytes=f.size.disk_bytes,
            family=f.size.family,
            builtin=f.size.builtin,
            fits_now=f.fits_now,
        )
        for f in p.sizes.list_with_fit()
    ]


@router.post("", status_code=201, response_model=schemas.SizeOut)
def create_size(body: schemas.SizeCreate, p: Platform = Depends(platform)) -> schemas.SizeOut:
    memory = parse_bytes(body.memory, "memory", default_unit="M")
    if memory % MIB:
        raise InvalidInput("memory", "must be a whole number of MiB")
    disk = parse_bytes(body.disk, "disk", default_unit="G")
    size = p.sizes.create(body.name, body.vcpus, memory // MIB, disk, body.family)
    fits = next(f.fits_now for f in p.sizes.list_with_fit() if f.size.name == size.name)
    return schemas.SizeOut(
        name=size.name,
        vcpus=size.vcpus,
        memory_mib=size.memory_mib,
        disk_bytes=size.disk_bytes,
        family=size.family,
        builtin=False,
        fits_now=fits,
    )


@router.delete("/{name}", status_code=204)
def delete_size(name: str, p: Platform = Depends(platform)) -> Response:
    p.sizes.delete(check_size_name("name", name))
    return Response(status_code=204)
