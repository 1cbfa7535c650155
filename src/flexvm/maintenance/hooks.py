"""The operator's update command, run for one host: its environment, its timeout, its output.

The hook runs on the control-plane server that runs the maintenance, through ``/bin/sh -c``, in
a process group of its own so that a timeout stops it and everything it started. It is told the
host in ``FLEXVM_HOST`` and ``FLEXVM_HOST_URI`` (and the run in ``FLEXVM_MAINTENANCE_ID``), and
finds this flexvm first on its ``PATH``. Its whole output is kept in a log file; its last lines
are recorded with the run. A server that dies while a hook runs leaves it running (stopping an
upgrade half-way is worse): the server that resumes the run, when it is on the same machine,
waits for that one to end, then runs the hook again; on another machine it cannot see it. So a
hook must be safe to run twice (as package upgrades are).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flexvm import programs

OUTPUT_TAIL = 2000  # characters of the hook's output recorded with the run
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a hook past its timeout


@dataclass
class HookResult:
    host: str
    exit_code: int | None  # None: it was stopped at its timeout, or could not start
    seconds: float
    output: str  # its last lines
    log: str  # the file with all of it
    why: str | None = None  # None: it succeeded

    @property
    def ok(self) -> bool:
        return self.why is None


def hook_environment(host: str, uri: str, run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FLEXVM_HOST=host, FLEXVM_HOST_URI=uri, FLEXVM_MAINTENANCE_ID=run_id)
    # `flexvm …` in a hook means the flexvm this server runs, not whatever else is on the PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    return env


def run_hook(command: str, host: str, uri: str, run_id: str, timeout: float, log_dir: Path) -> HookResult:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{host}.log"
    pid_file = log_dir / f"{host}.pid"
    _wait_for_earlier(pid_file, run_id, timeout)
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n".encode())
        out.flush()
        try:
            process = subprocess.Popen(
                [programs.find("sh"), "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=hook_environment(host, uri, run_id),
                cwd=log_dir,
                start_new_session=True,
            )
        except (OSError, ValueError) as err:  # ValueError: an argument Popen refuses
            return HookResult(host, None, 0.0, "", str(log), f"the hook could not start: {err}")
        pid_file.write_text(str(process.pid))
        try:
            code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(process)
            code = None
        finally:
            pid_file.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    tail = log.read_bytes()[-OUTPUT_TAIL:].decode(errors="replace")
    if code is None:
        why = f"the hook ran past its timeout of {timeout:.0f} s and was stopped"
    elif code != 0:
        why = f"the hook exited with status {code}"
    else:
        why = None
    return HookResult(host, code, round(seconds, 2), tail, str(log), why)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the hook and all it started, then SIGKILL to whatever is left after a grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for_earlier(pid_file: Path, run_id: str, timeout: float) -> None:
    """A hook of this run that a dead server left running here (an upgrade half done): it is let
    finish, up to the hook's timeout, then stopped, before the hook runs again. Only a process
    whose environment names this run counts (a PID may have been reused)."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while _environ_of(pid).get("FLEXVM_MAINTENANCE_ID") == run_id:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            break
        time.sleep(0.5)
    pid_file.unlink(missing_ok=True)


def _environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
