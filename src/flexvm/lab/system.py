"""Running the system programs the lab is made with.

``run`` is the lab's one way to run a program, so tests can replace it (``system.run``) with a
fake that records commands or fails at a chosen one. Programs are found through
``flexvm.programs``, which says which Debian package is missing when one is.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from flexvm import programs
from flexvm.errors import HypervisorUnavailable, LabCommandError  # LabCommandError: also imported from here

# Every program the lab runs (directly, or inside a host through nsenter).
LAB_PROGRAMS = (
    "ip", "nsenter", "unshare", "mount", "umount", "mkdir", "true", "hostname", "dnsmasq", "libvirtd", "virtlogd",
    "virtlockd",
)  # fmt: skip
COMMAND_TIMEOUT = 60.0


def require_tools() -> None:
    """Before the lab makes anything: every program it runs is installed, and we are root."""
    programs.require(LAB_PROGRAMS)
    if os.geteuid() != 0:
        raise HypervisorUnavailable("the lab makes network namespaces, mounts and daemons: it must run as root")


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; a failure becomes LabCommandError.

    Output is captured, or with ``log`` appended to that file: a daemon that forks into the
    background may keep its output open, and must never hold a pipe we wait on."""
    cmd = programs.command(argv)
    try:
        if log is None:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        else:
            done = _run_logged(cmd, argv, log, timeout)
    except subprocess.TimeoutExpired as err:
        raise LabCommandError(f"`{' '.join(argv)}` did not finish in {timeout:.0f} s") from err
    if check and done.returncode != 0:
        output = _tail(log) if log is not None else (done.stderr or done.stdout).strip()
        raise LabCommandError(
            f"`{' '.join(argv)}` failed ({done.returncode}): {output}",
            details={"argv": list(argv), "returncode": done.returncode, "output": output},
        )
    return done


def _run_logged(cmd: list[str], argv: Sequence[str], log: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=timeout, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, "", "")


def _tail(log: Path, lines: int = 8) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
