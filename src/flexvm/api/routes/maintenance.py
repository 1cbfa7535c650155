"""Rolling maintenance: plan, run (the platform Owner's: its hook runs as the server), status,
pause, resume, cancel. One run at a time, so the controls name none."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from flexvm.api import maintenance_schemas as ms
from flexvm.api import schemas
from flexvm.api.access import Scope, platform_access
from flexvm.api.deps import accepted, platform
from flexvm.maintenance.rolling import MaintenanceRequest, MaintenanceStatus, plan_out
from flexvm.model.access import Right
from flexvm.platform import Platform

router = APIRouter(prefix="/maintenance", tags=["maintenance"])


def _status_out(status: MaintenanceStatus) -> ms.MaintenanceStatusOut:
    return ms.MaintenanceStatusOut(
        state=status.state,
        reason=status.control.reason if status.control.paused else None,
        asked_by=status.control.asked_by,
        hosts={host: phase.value for host, phase in status.phases.items()},
        operation=schemas.OperationOut.model_validate(status.operation),
    )


@router.post("/plan", response_model=ms.MaintenancePlanOut)
def plan(
    body: ms.MaintenancePlanRequest, scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)
) -> ms.MaintenancePlanOut:
    """The order, the capacity check of every batch, what cannot move live, the time (changes nothing)."""
    return ms.MaintenancePlanOut.model_validate(plan_out(p.maintenance.plan(body.hosts, body.all_hosts, body.parallel)))


@router.post("/runs", status_code=202, response_model=schemas.OperationOut)
def start(
    body: ms.MaintenanceRunRequest, scope: Scope = platform_access(Right.OWN), p: Platform = Depends(platform)
) -> JSONResponse:
    request = MaintenanceRequest(
        body.hook, body.hosts, body.all_hosts, body.parallel, body.hook_timeout, body.host_timeout
    )
    return accepted(p.maintenance.start(request))


@router.get("", response_model=ms.MaintenanceStatusOut)
def status(scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)) -> ms.MaintenanceStatusOut:
    """The run under way, or else the last one."""
    return _status_out(p.maintenance.status())


@router.post("/pause", response_model=ms.MaintenanceStatusOut)
def pause(scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)) -> ms.MaintenanceStatusOut:
    """Pause before the next batch (the one under way finishes, its hosts back up)."""
    return _status_out(p.maintenance.pause(scope.caller.user))


@router.post("/resume", response_model=ms.MaintenanceStatusOut)
def resume(scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)) -> ms.MaintenanceStatusOut:
    """Go on: the part that paused the run is tried again."""
    return _status_out(p.maintenance.resume(scope.caller.user))


@router.post("/cancel", response_model=ms.MaintenanceStatusOut)
def cancel(scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)) -> ms.MaintenanceStatusOut:
    """Stop the run (a hook under way ends first); hosts not yet updated are up again."""
    return _status_out(p.maintenance.cancel())
