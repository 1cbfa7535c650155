from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from flexvm.api import schemas
from flexvm.api.access import Scope, any_role, platform_access
from flexvm.api.deps import named, platform
from flexvm.api.params import Name
from flexvm.model.access import Right
from flexvm.platform import Platform

router = APIRouter(prefix="/networks", tags=["networks"])


@router.get("", response_model=list[schemas.NetworkOut])
def list_networks(scope: Scope = any_role(), p: Platform = Depends(platform)) -> list[schemas.NetworkOut]:
    return [schemas.NetworkOut.model_validate(n) for n in p.networks.list()]


@router.post("", status_code=201, response_model=schemas.NetworkOut)
def create_network(
    body: schemas.NetworkCreate, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> schemas.NetworkOut:
    network = p.networks.create(
        body.name,
        body.subnet,
        body.range_start,
        body.range_end,
        gateway=body.gateway,
        dhcp_hosts_dir=body.dhcp_hosts_dir,
    )
    return schemas.NetworkOut.model_validate(network)


@router.get("/{name}", response_model=schemas.NetworkOut)
def show_network(name: Name, scope: Scope = any_role(), p: Platform = Depends(platform)) -> schemas.NetworkOut:
    return schemas.NetworkOut.model_validate(p.networks.get(named("name", name)))


@router.delete("/{name}", status_code=204)
def delete_network(
    name: Name, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> Response:
    p.networks.delete(named("name", name))
    return Response(status_code=204)
