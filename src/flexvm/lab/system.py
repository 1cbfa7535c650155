"""Running the system tools the lab is made with, and saying which Debian package is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

from flexvm.errors import HypervisorUnavailable, LabCommandError  # LabCommandError: also imported from here

# Each tool the lab runs, and the Debian package that provides it.
TOOLS = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "libvirtd": "libvirt-daemon-system",
    "virtlogd": "libvirt-daemon-system",
    "dnsmasq": "dnsmasq-base",
    "hostname": "hostname",
}
# Daemons and ip live in sbin, which a non-login shell's PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
COMMAND_TIMEOUT = 60.0


Which = Callable[..., "str | None"]


def missing_tools(which: Which = shutil.which) -> dict[str, str]:
    """{tool: package} for every tool not found. ``which`` is injectable for tests."""
    return {name: pkg for name, pkg in TOOLS.items() if not which(name, path=SEARCH_PATH)}


def require_tools(which: Which = shutil.which) -> None:
    missing = missing_tools(which)
    if missing:
        packages = sorted(set(missing.values()))
        raise HypervisorUnavailable(
            f"the lab needs {', '.join(sorted(missing))}, not found on this machine: "
            f"install the Debian package(s) {' '.join(packages)} (apt-get install {' '.join(packages)})",
            details={"missing": missing},
        )
    if os.geteuid() != 0:
        raise HypervisorUnavailable("the lab makes network namespaces, mounts and daemons: it must run as root")


def tool(name: str) -> str:
    return shutil.which(name, path=SEARCH_PATH) or name


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, output captured; a failure becomes LabCommandError."""
    cmd = [tool(argv[0]), *argv[1:]]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise LabCommandError(f"`{' '.join(argv)}` did not finish in {timeout:.0f} s") from err
    if check and done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise LabCommandError(f"`{' '.join(argv)}` failed ({done.returncode}): {output}")
    return done
