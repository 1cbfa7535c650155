"""Powering off whatever guests a lab host still runs, through that host's own libvirtd.

Done before its daemons are stopped, so libvirt tears down each guest properly (QEMU, taps,
its own state files). Anything it cannot reach is left to the PID sweep that follows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

try:
    import libvirt
except ImportError:  # pragma: no cover - libvirt-python is a dependency; the sweep still works
    libvirt = None

CALL_PATIENCE = 30.0


def _silence_libvirt() -> None:
    # libvirt prints every error to stderr unless a handler is set; the lab reports its own.
    if libvirt is not None:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _with_deadline(fn: Callable[[], Any], timeout: float) -> Any:
    """Run ``fn`` in a thread; give up on it (leaving it to finish on its own) after ``timeout``."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except Exception as err:  # reported to the caller below
            result["error"] = err

    thread = threading.Thread(target=target, name="lab-guest-teardown", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer in {timeout:.0f} s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def destroy_all(uri: str, timeout: float = CALL_PATIENCE) -> list[str]:
    """Power off every running guest of the host at ``uri``; the names of those it stopped.
    Raises (libvirt's error, or TimeoutError) when the host cannot be reached or refuses."""
    if libvirt is None:
        return []
    _silence_libvirt()

    def work() -> list[str]:
        conn = libvirt.open(uri)
        try:
            stopped = []
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    dom.destroy()
                    stopped.append(dom.name())
                except libvirt.libvirtError:
                    if dom.isActive():
                        raise
            return stopped
        finally:
            conn.close()

    return list(_with_deadline(work, timeout))
