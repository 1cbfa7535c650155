"""`flexvm serve`: open the platform, join the servers on its database, resume what dead servers
left, and serve the API until stopped (several may run on one PostgreSQL)."""

from __future__ import annotations

import logging

import uvicorn

from flexvm.api.app import create_app
from flexvm.api.auth import ensure_token
from flexvm.api.tls import ServerTls, server_tls, url_host
from flexvm.config import Settings
from flexvm.platform import Platform

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # First, before the database is opened or the port bound: plain HTTP off loopback, or an
    # operator's certificate that will not load, is refused here.
    tls = server_tls(settings)
    platform = Platform.open(settings)
    token = ensure_token(settings.token_file)
    report = platform.start()
    if report.operations:
        log.info("resuming %d operation(s) that stopped servers left", len(report.operations))
    app = create_app(platform, token)
    url = local_url(settings, tls)
    platform.engine.servers.set_url(url)
    settings.server_file.write_text(url + "\n")
    log.info("flexvm API on %s (token in %s)", url, settings.token_file)
    if tls is None:
        log.warning("serving plain HTTP on %s, as asked (loopback only)", settings.listen_host)
    elif tls.ca_file is not None:
        log.info("its certificate is signed by the CA in %s: curl --cacert %s %s/v1/vms", tls.ca_file, tls.ca_file, url)
    else:
        log.info("serving the certificate %s (clients: FLEXVM_CA_FILE names the CA that signed it)", tls.cert_file)
    try:
        uvicorn.run(
            app,
            host=settings.listen_host,
            port=settings.port,
            log_level="warning",
            ssl_certfile=None if tls is None else tls.cert_file,
            ssl_keyfile=None if tls is None else tls.key_file,
        )
    finally:
        platform.close()


def local_url(settings: Settings, tls: ServerTls | None) -> str:
    """The URL this machine's CLI reaches the server at (the server file holds it). A wildcard
    listen address (0.0.0.0, ::) is no address to connect to: loopback is, and is in the
    certificate's names."""
    host = settings.listen_host
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1" if ":" not in host else "::1"
    return f"{'http' if tls is None else 'https'}://{url_host(host)}:{settings.port}"
