from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from flexvm.api import schemas
from flexvm.api.access import Scope, platform_access, project_access
from flexvm.api.deps import accepted, image_in_scope, platform
from flexvm.api.params import NAME_SCHEMA, Name
from flexvm.errors import Forbidden, InvalidInput
from flexvm.model.access import Right
from flexvm.model.projects import image_key, image_project
from flexvm.platform import Platform

router = APIRouter(prefix="/images", tags=["images"])

# The body is handed to the service in blocks of about this much, not in the server's small reads:
# each block is one hop from the event loop to the thread writing the file.
UPLOAD_BLOCK = 1024 * 1024
_ERROR = {"description": "error in Azure's shape", "model": schemas.ErrorOut}
_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the disk itself (qcow2 or raw), as raw bytes; not JSON, not a form",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


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
    name: Name, scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)
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


@router.post(
    "/upload",
    status_code=201,
    response_model=schemas.ImageOut,
    openapi_extra=_UPLOAD_OPENAPI,
    responses={
        400: {**_ERROR, "description": "not a usable disk, a cut-off body, a sha256 that differs, a bad field"},
        409: {**_ERROR, "description": "the name is taken, or being imported or uploaded"},
        413: {**_ERROR, "description": "the body is over the server's limit (FLEXVM_UPLOAD_MAX)"},
    },
)
async def upload_image(
    request: Request,
    name: str = Query(description="the image's name", json_schema_extra=NAME_SCHEMA),
    public: bool = Query(False, description="for everyone (the admin only); else private to the project"),
    sha256: str | None = Query(None, description="refuse the disk unless it has this sha256"),
    cloud_init: bool = Query(False, description="give VMs made from it a NoCloud seed"),
    description: str = Query(""),
    scope: Scope = project_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> schemas.ImageOut:
    """Upload a disk as the request body: streamed to the image store, checked as an import is,
    and recorded when it is whole; answers with the image (201). Nothing is kept of an upload that
    is refused or cut off."""
    if public and not scope.caller.is_admin:
        raise Forbidden(
            "public: an image for everyone is the admin's to upload; upload it into your project instead",
            details={"field": "public", "needed_role": "Owner", "scope": "platform"},
        )
    project = None if public else scope.project
    scope.touched.append(image_key(project, name))
    content_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    if content_type.lower() != "application/octet-stream":
        raise InvalidInput("content-type", f"must be application/octet-stream (the disk's bytes), not {content_type}")
    image = await run_in_threadpool(
        p.images.upload,
        name,
        _blocks(request.stream()),
        project=project,
        limit=p.settings.upload_max_bytes,
        length=_content_length(request),
        sha256=sha256,
        cloud_init=cloud_init,
        description=description,
    )
    return schemas.ImageOut.model_validate(image)


def _content_length(request: Request) -> int | None:
    text = request.headers.get("content-length")
    if text is None:
        return None  # chunked: the limit is enforced as the bytes come
    if not text.isdigit():
        raise InvalidInput("content-length", f"{text!r} is not a number of bytes")
    return int(text)


def _blocks(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The request body for a worker thread: each block read on the event loop, as it is asked for."""

    async def next_block() -> bytes:
        block = bytearray()
        try:
            async for chunk in stream:
                block += chunk
                if len(block) >= UPLOAD_BLOCK:
                    break
        except ClientDisconnect as err:
            raise InvalidInput("body", "the upload was cut off: the client went away") from err
        return bytes(block)

    while block := anyio.from_thread.run(next_block):
        yield block


@router.post("/build", status_code=202, response_model=schemas.OperationOut)
def build_image(
    body: schemas.ImageBuild, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.images.build_tiny(body.name))


@router.delete("/{name}", response_model=schemas.ImageDeleted)
def delete_image(
    name: Name, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
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
