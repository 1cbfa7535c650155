from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.deps import accepted, named, platform
from flexvm.platform import Platform

router = APIRouter(prefix="/images", tags=["images"])


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


@router.get("", response_model=list[schemas.ImageOut])
def list_images(p: Platform = Depends(platform)) -> list[schemas.ImageOut]:
    return [schemas.ImageOut.model_validate(image) for image in p.images.list()]


@router.get("/{name}", response_model=schemas.ImageOut)
def show_image(name: str, p: Platform = Depends(platform)) -> schemas.ImageOut:
    return schemas.ImageOut.model_validate(p.images.get(named("name", name)))


@router.post("", status_code=202, response_model=schemas.OperationOut)
def import_image(body: schemas.ImageImport, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(
        p.images.import_image(
            body.name,
            Path(body.disk),
            kernel=_path(body.kernel),
            initrd=_path(body.initrd),
            cmdline=body.cmdline,
            ready_marker=body.ready_marker,
            cloud_init=body.cloud_init,
            description=body.description,
            sha256=body.sha256,
            requires=body.requires,
        )
    )


@router.post("/build", status_code=202, response_model=schemas.OperationOut)
def build_image(body: schemas.ImageBuild, p: Platform = Depends(platform)) -> JSONResponse:
    return accepted(p.images.build_tiny(body.name))


@router.delete("/{name}", response_model=schemas.ImageDeleted)
def delete_image(name: str, p: Platform = Depends(platform)) -> schemas.ImageDeleted:
    drivers = [p.drivers.for_uri(h.uri) for h in p.hosts.list()]
    unreachable = p.images.delete(named("name", name), drivers)
    return schemas.ImageDeleted(deleted=name, unreachable_hosts=unreachable)
