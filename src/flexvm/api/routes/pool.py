from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.access import Scope, platform_access
from flexvm.api.deps import accepted, platform
from flexvm.api.routes.hosts import moves_out
from flexvm.model.access import Right
from flexvm.platform import Platform

router = APIRouter(prefix="/pool", tags=["pool"])


@router.post(
    "/rebalance",
    status_code=202,
    response_model=schemas.OperationOut,
    responses={200: {"model": schemas.MovesPlanOut, "description": "the plan (dry run)"}},
)
def rebalance(
    body: schemas.RebalanceRequest, scope: Scope = platform_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    if body.dry_run:
        plan = p.drains.plan_rebalance(body.threshold, body.max_moves)
        return JSONResponse(moves_out(plan).model_dump(mode="json"))
    return accepted(p.drains.rebalance(body.threshold, body.max_moves))
