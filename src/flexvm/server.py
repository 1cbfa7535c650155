"""`flexvm serve`: open the platform, join the servers on its database, resume what dead servers
left, and serve the API until stopped (several may run on one PostgreSQL)."""

from __future__ import annotations

import logging

import uvicorn

from flexvm.api.app import create_app
from flexvm.api.auth import ensure_token
from flexvm.config import Settings
from flexvm.platform import Platform

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    platform = Platform.open(settings)
    token = ensure_token(settings.token_file)
    report = platform.start()
    if report.operations:
        log.info("resuming %d operation(s) that stopped servers left", len(report.operations))
    app = create_app(platform, token)
    url = f"http://{settings.listen_host}:{settings.port}"
    platform.engine.servers.set_url(url)
    settings.server_file.write_text(url + "\n")
    log.info("flexvm API on %s (token in %s)", url, settings.token_file)
    try:
        uvicorn.run(app, host=settings.listen_host, port=settings.port, log_level="warning")
    finally:
        platform.close()
