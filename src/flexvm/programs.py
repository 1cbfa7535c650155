"""Every external program flexvm runs, the Debian package that installs it, and how it is found.

Runners never name a program's path themselves: they call ``find(name)`` (or ``command(argv)``),
which refuses a program that is not listed here. So a new program cannot be run without an entry,
and ``tests/unit/test_programs.py`` checks, with ``dpkg -S``, that each entry's package is one
``scripts/setup.sh`` installs: a missing install step fails on any machine, not only a fresh one.

A missing program raises ``ProgramMissing`` naming it and its package::

    FlexvmError
    └── ProgramMissing (503)   a program flexvm runs is not installed (details: program -> package)

The list also holds what flexvm needs but does not start itself (QEMU, which libvirtd starts for
it) and what the test suite and scripts run (virsh, PostgreSQL), so one place answers "what must
be installed".
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flexvm.errors import FlexvmError, ProgramMissing

# Daemons and ip live in sbin, which a non-root or non-login shell's PATH may lack. Searched
# after PATH, so an operator's PATH still decides first.
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# PostgreSQL keeps each major version's programs off PATH, in a directory of its own.
POSTGRES_BIN = "/usr/lib/postgresql/15/bin"
# Programs that run the command after their own ``--`` (the lab enters host namespaces this way).
WRAPPERS = frozenset({"nsenter", "unshare"})


@dataclass(frozen=True)
class Program:
    package: str  # the Debian package whose files include it (what `dpkg -S` names)
    used_by: str  # who runs it, for what
    directory: str | None = None  # found only here, never on PATH (a versioned or exact place)


PROGRAMS: dict[str, Program] = {
    # --- the server and the CLI -------------------------------------------------------------
    "qemu-img": Program("qemu-utils", "images: inspect, check, convert; VM disk export and capture"),
    "mke2fs": Program("e2fsprogs", "tiny image: its ext4 root disk"),
    # The guest has no libc: only busybox-static's binary, in its exact place, will do.
    "busybox": Program("busybox-static", "tiny image: the guest's userland (listed, then copied in)", "/bin"),
    "haproxy": Program("haproxy", "scale sets: the load balancer"),
    "ipmitool": Program("ipmitool", "fencing: a failed host's power, through its management controller"),
    # --- the lab (flexvm lab up/down, and the tests' labs) ----------------------------------
    "ip": Program("iproute2", "lab: namespaces, veths, bridges, addresses, routes"),
    "nsenter": Program("util-linux", "lab: runs commands and daemons inside a host's namespaces"),
    "unshare": Program("util-linux", "lab: makes each host's mount and UTS namespaces"),
    "mount": Program("mount", "lab: bind mounts of each host's private libvirt directories"),
    "umount": Program("mount", "lab: unpins namespaces and removes its mounts"),
    "mkdir": Program("coreutils", "lab: mount targets inside a host"),
    "true": Program("coreutils", "lab: the command unshare runs while pinning namespaces"),
    "sh": Program("dash", "rolling maintenance: runs the operator's update hook", "/bin"),
    "hostname": Program("hostname", "lab: each host's own name in its UTS namespace"),
    "dnsmasq": Program("dnsmasq-base", "lab: DHCP on the lab switch"),
    "libvirtd": Program("libvirt-daemon", "lab: each host's libvirtd; setup.sh: the machine's"),
    "virtlogd": Program("libvirt-daemon", "lab: beside each host's libvirtd; setup.sh: the machine's"),
    "virtlockd": Program("libvirt-daemon", "lab with shared storage: each host's disk locks"),
    # --- started by libvirtd on flexvm's behalf (and by the tiny-image tests directly) ------
    "qemu-system-x86_64": Program("qemu-system-x86", "every guest, through libvirtd"),
    # libvirtd's nwfilter driver runs it to put each project's filter on its guests' NICs.
    "ebtables": Program("iptables", "every host's libvirtd: the filters that keep projects' guests apart"),
    # --- the test suite and scripts/ --------------------------------------------------------
    "virsh": Program("libvirt-clients", "tests and setup.sh: the machine's libvirt, from outside flexvm"),
    "curl": Program("curl", "scripts/up.sh: the server's health check"),
    "tmux": Program("tmux", "tests: `flexvm top` in a real terminal"),
    "blkid": Program("util-linux", "tests: the cloud-init seed's label, as cloud-init finds it"),
    # Debian's own Python (not a virtualenv's or pyenv's on PATH): the one python3-yaml serves.
    "python3": Program("python3-minimal", "tests: a Python with PyYAML (python3-yaml) to parse seeds", "/usr/bin"),
    "dpkg": Program("dpkg", "tests: which package owns each program here"),
    "initdb": Program("postgresql-15", "tests: a private PostgreSQL cluster", POSTGRES_BIN),
    "pg_ctl": Program("postgresql-15", "tests: start and stop that cluster", POSTGRES_BIN),
    "postgres": Program("postgresql-15", "tests: the PostgreSQL server", POSTGRES_BIN),
    "psql": Program("postgresql-client-15", "tests: talking to that cluster", POSTGRES_BIN),
}


def search_path(name: str) -> str:
    """Where ``find`` looks for ``name``, as a PATH string (read now: PATH may change)."""
    program = _listed(name)
    if program.directory is not None:
        return program.directory
    return os.pathsep.join([os.environ.get("PATH", os.defpath), *SYSTEM_DIRS])


def find(name: str) -> str:
    """The absolute path of the listed program ``name``; ProgramMissing when it is not installed."""
    found = shutil.which(name, path=search_path(name))
    if found is None:
        raise ProgramMissing({name: PROGRAMS[name].package})
    return found


def require(names: Iterable[str]) -> None:
    """Check every one of ``names`` is installed, so a command needing several fails before it
    makes anything, naming all that is missing at once."""
    missing = {}
    for name in names:
        try:
            find(name)
        except ProgramMissing as err:
            missing.update(err.details["missing"])
    if missing:
        raise ProgramMissing(missing)


def command(argv: Sequence[str]) -> list[str]:
    """``argv`` with its program found; for a wrapper (``nsenter … -- CMD``), CMD's program too."""
    first, rest = find(argv[0]), list(argv[1:])
    if argv[0] in WRAPPERS and "--" in rest:
        split = rest.index("--")
        rest = [*rest[: split + 1], *command(rest[split + 1 :])]
    return [first, *rest]


def _listed(name: str) -> Program:
    try:
        return PROGRAMS[name]
    except KeyError:
        # A bug, not a missing install: every program flexvm runs must be listed above.
        raise FlexvmError(
            f"'{name}' is not in flexvm.programs.PROGRAMS; list it there with the Debian package that installs it",
            details={"program": name},
        ) from None
