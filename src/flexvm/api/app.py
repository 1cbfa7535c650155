"""The FastAPI application: routes (each with its access rule), the audit trail, and errors in
Azure's shape."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from flexvm import __version__
from flexvm.access.people import People
from flexvm.api.access import Scope, platform_access, require_rules
from flexvm.api.audit import audit_event
from flexvm.api.deps import PREFIX
from flexvm.api.hints import with_hint
from flexvm.api.routes import (
    availability_sets,
    capacity,
    hosts,
    images,
    maintenance,
    metrics,
    networks,
    operations,
    people,
    pool,
    projects,
    scalesets,
    sizes,
    storage,
    vm_files,
    vms,
)
from flexvm.errors import DatabaseUnavailable, FlexvmError
from flexvm.model.access import Right
from flexvm.monitor.prometheus import exposition
from flexvm.platform import Platform

log = logging.getLogger(__name__)

# Prometheus scrapes without a token; what it reads is measurements, no secrets or controls.
# /metrics is not among them: it names every project's VMs, so a scraper needs a platform role.
OPEN_PATHS = {"/healthz", "/openapi.json"}
# The database is reconnected to as soon as it answers again (pool_pre_ping): a client may retry soon.
RETRY_AFTER_SECONDS = 5


def _error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or {}}}, status_code=status)


def create_app(platform: Platform, token: str) -> FastAPI:
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and flexvm works offline.
    # The OpenAPI document itself is served (/openapi.json).
    app = FastAPI(
        title="flexvm",
        version=__version__,
        description="Real VMs on your own hosts, Azure-style.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.platform = platform
    for module in (
        vms,
        vm_files,
        sizes,
        images,
        hosts,
        networks,
        storage,
        availability_sets,
        capacity,
        pool,
        maintenance,
        scalesets,
        operations,
        metrics,
    ):
        app.include_router(module.router, prefix=PREFIX)
    app.include_router(operations.servers_router, prefix=PREFIX)
    for module in (projects, people):
        app.include_router(module.router, prefix=PREFIX)
    app.include_router(people.audit_router, prefix=PREFIX)
    app.state.people = People(platform.db, token)

    # In the OpenAPI document like any guarded route: its rule is checked there (a platform Reader's
    # token), and the permission matrix tries it as every caller.
    @app.get(
        "/metrics",
        summary="Prometheus exposition of every host's and VM's metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def prometheus_metrics(scope: Scope = platform_access(Right.READ)) -> Response:
        return Response(exposition(platform.collector), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.middleware("http")
    async def audited(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = str(uuid.uuid4())
        response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        event = audit_event(request, response.status_code)
        if event is not None:
            try:
                await run_in_threadpool(platform.audit.append, event)
            except FlexvmError as err:  # the answer stands; the operator sees the gap in the log
                log.error("audit event of request %s not written: %s", request.state.request_id, err.message)
        return response

    @app.exception_handler(FlexvmError)
    async def flexvm_error(request: Request, err: FlexvmError) -> JSONResponse:
        request.state.error = f"{err.code}: {err.message}"  # for the audit trail
        response = _error(err.status, err.code, err.message, with_hint(err.details))
        if isinstance(err, DatabaseUnavailable):
            log.warning("answered 503: %s", err.message)  # the operator sees an outage in the log too
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for item in err.errors():
            if item.get("type") == "json_invalid":
                location = "body"  # its loc is a character offset, not a field
            else:
                location = ".".join(str(part) for part in item["loc"] if part != "body") or "body"
            problems.append({"field": location, "message": item["msg"]})
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        field = problems[0]["field"] if problems else ""
        request.state.error = f"InvalidInput: {message}"
        return _error(400, "InvalidInput", message, {"field": field, "errors": problems})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(err.status_code, "HttpError")
        return _error(err.status_code, code, str(err.detail))

    require_rules(app, OPEN_PATHS)
    return app
