from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.access import Scope, platform_access, project_access
from flexvm.api.deps import accepted, image_in_scope, platform
from flexvm.errors import Forbidden
from flexvm.model.access import Right
from flexvm.model.projects import image_project
from flexvm.platform import Platform

router = APIRouter(prefix="/images", tags=["images"])


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


@router.get("", response_model=list[schemas.ImageOut])
def list_images(scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)) -> list[schemas.ImageOut]:
    """The public images and the project's private ones."""
    return [
        schemas.ImageOut.model_validate(image)
        for image in p.images.list()
        if image_project(image.name) in (None, scope.project)
    ]


@router.get("/{name}", response_model=schemas.ImageOut)
def show_image(
    name: str, scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)
) -> schemas.ImageOut:
    """The project's private image of that name, else the public one."""
    return schemas.ImageOut.model_validate(p.images.get(image_in_scope(p, scope, name, "name")))


@router.post("", status_code=202, response_model=schemas.OperationOut)
def import_image(
    body: schemas.ImageImport, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
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
def build_image(
    body: schemas.ImageBuild, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.images.build_tiny(body.name))


@router.delete("/{name}", response_model=schemas.ImageDeleted)
def delete_image(
    name: str, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> schemas.ImageDeleted:
    """A private image by its project's Contributors; a public one by the admin."""
    key = image_in_scope(p, scope, name, "name")
    p.images.get(key)
    if image_project(key) is None and not scope.caller.is_admin:
        raise Forbidden(
            f"image '{name}' is public: only the admin deletes public images",
            details={"needed_role": "Owner", "scope": "platform"},
        )
    scope.touched.append(key)
    drivers = [p.drivers.for_uri(h.uri) for h in p.hosts.list()]
    unreachable = p.images.delete(key, drivers)
    return schemas.ImageDeleted(deleted=name, unreachable_hosts=unreachable)
