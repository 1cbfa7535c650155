"""Projects: listed as each caller sees them; made, re-limited and removed by the admin."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from flexvm.access.projects import ProjectView
from flexvm.api.access import Scope, any_role, named_project_access, platform_access
from flexvm.api.access_schemas import ProjectCreate, ProjectNetwork, ProjectOut, ProjectQuotasUpdate, QuotasIn, QuotaUse
from flexvm.api.deps import platform
from flexvm.api.params import ProjectName
from flexvm.errors import InvalidInput
from flexvm.model.access import QUOTA_NAMES, Project, Quotas, Right
from flexvm.model.units import parse_bytes, parse_mib
from flexvm.platform import Platform

router = APIRouter(prefix="/projects", tags=["projects"])


def quotas_from(body: QuotasIn) -> dict[str, int | None]:
    """The quotas a request names, in the store's units (only those it names)."""
    given = body.model_dump(exclude_unset=True)
    out: dict[str, int | None] = {}
    for name, value in given.items():
        if value is None:
            continue
        if name == "memory":
            out["memory_mib"] = parse_mib(value, "quotas.memory")
        elif name == "disk":
            out["disk_bytes"] = parse_bytes(value, "quotas.disk", default_unit="G")
        else:
            out[name] = value
    return out


def project_out(
    project: Project, scope: Scope, used: Quotas | None = None, networks: dict[str, tuple[int, list[str]]] | None = None
) -> ProjectOut:
    role = scope.caller.role_in(project.name)
    uses = []
    if used is not None:
        uses = [
            QuotaUse(quota=name, used=getattr(used, name) or 0, limit=limit) for name, limit in project.quotas.items()
        ]
    return ProjectOut(
        name=project.name,
        description=project.description,
        created_at=project.created_at,
        quotas=uses,
        your_role=role.title if role else None,
        networks=[
            ProjectNetwork(network=name, addresses=count, blocks=blocks)
            for name, (count, blocks) in sorted((networks or {}).items())
        ],
    )


@router.get("", response_model=list[ProjectOut])
def list_projects(scope: Scope = any_role(), p: Platform = Depends(platform)) -> list[ProjectOut]:
    """The projects the caller holds a role in (every project, for a platform role)."""
    return [project_out(project, scope) for project in p.projects.list() if scope.caller.sees(project.name)]


@router.post("", status_code=201, response_model=ProjectOut, responses={409: {"description": "name taken"}})
def create_project(
    body: ProjectCreate, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> ProjectOut:
    scope.touched.append(body.name)
    project = p.projects.create(
        body.name, body.description, Quotas(**quotas_from(body.quotas or QuotasIn.model_validate({})))
    )
    return project_out(project, scope, Quotas())


@router.get("/{name}", response_model=ProjectOut)
def show_project(
    name: ProjectName, scope: Scope = named_project_access(Right.READ), p: Platform = Depends(platform)
) -> ProjectOut:
    """The project with its use against every quota."""
    view: ProjectView = p.projects.show(name)
    return project_out(view.project, scope, view.used, view.networks)


@router.patch("/{name}", response_model=ProjectOut)
def update_quotas(
    name: ProjectName,
    body: ProjectQuotasUpdate,
    scope: Scope = platform_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> ProjectOut:
    scope.touched.append(name)
    changes: dict[str, int | None] = dict(quotas_from(body.quotas))
    for cleared in body.clear:
        quota = {"memory": "memory_mib", "disk": "disk_bytes"}.get(cleared, cleared)
        if quota not in QUOTA_NAMES:
            raise InvalidInput("clear", f"{cleared!r} is not a quota: use vcpus, memory, vms, disk or instances")
        changes[quota] = None
    p.projects.set_quotas(name, changes)
    view = p.projects.show(name)
    return project_out(view.project, scope, view.used, view.networks)


@router.delete("/{name}", status_code=204, responses={409: {"description": "the project still holds resources"}})
def delete_project(
    name: ProjectName, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> Response:
    scope.touched.append(name)
    p.projects.delete(name)
    return Response(status_code=204)
