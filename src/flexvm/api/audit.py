"""What the audit trail records of a request: every change, and every refused attempt."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import Request

from flexvm.model.access import AuditEvent

READS = {"GET", "HEAD", "OPTIONS"}


def audit_event(request: Request, status: int) -> AuditEvent | None:
    refusal: str | None = getattr(request.state, "refusal", None)
    if request.method in READS and refusal is None and status not in (401, 403):
        return None
    caller = getattr(request.state, "caller", None)
    route = request.scope.get("route")
    scope = getattr(request.state, "scope", None)
    resource = ", ".join(scope.touched) if scope is not None and scope.touched else ""
    if not resource:
        resource = "/".join(str(v) for v in (request.scope.get("path_params") or {}).values())
    if refusal is not None or status in (401, 403):
        outcome = "denied"
    elif status == 202:
        outcome = "accepted"
    elif status < 400:
        outcome = "succeeded"
    else:
        outcome = "failed"
    return AuditEvent(
        at=datetime.now(UTC),
        user=caller.user if caller else None,
        token_id=caller.token_id if caller else getattr(request.state, "token_id", None),
        address=request.client.host if request.client else "",
        method=request.method,
        path=request.url.path[:512],
        action=getattr(route, "name", "") or request.url.path[:128],
        project=getattr(request.state, "project", None),
        resource=resource[:128],
        request_id=request.state.request_id,
        status=status,
        outcome=outcome,
        detail=(refusal or getattr(request.state, "error", None) or "")[:2000],
    )
