"""Each lab host's own mount and UTS namespaces, pinned to files so daemons can be started in
them again later (``start_host``), and the mounts the lab leaves in the root namespace.

A host's namespaces are made once by ``unshare --mount=FILE --uts=FILE`` and entered with
``nsenter``. Inside, the host's private directories are bind-mounted over the system's libvirt
directories, /sys is remounted so it shows the host's network namespace (libvirt looks up
bridges there), /etc/hosts names every lab host, and the hostname is the host's name.

The only mounts in the root namespace: ``ns/`` bound onto itself and made private (nsfs files
can only be pinned on a private mount), and the two pinned namespace files per host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flexvm.lab import system
from flexvm.lab.netns import NETNS_DIR
from flexvm.lab.system import LabCommandError


@dataclass(frozen=True)
class HostNamespaces:
    netns: str
    mnt_file: Path
    uts_file: Path

    def enter(self) -> list[str]:
        """The command prefix that runs something inside this host."""
        return [
            "nsenter",
            f"--net={NETNS_DIR / self.netns}",
            f"--mount={self.mnt_file}",
            f"--uts={self.uts_file}",
            "--",
        ]

    @property
    def pins(self) -> tuple[Path, Path]:
        return self.mnt_file, self.uts_file

    @property
    def pinned(self) -> bool:
        return is_mountpoint(self.mnt_file) and is_mountpoint(self.uts_file)


def namespaces_for(ns_dir: Path, host_name: str, netns: str) -> HostNamespaces:
    return HostNamespaces(netns, ns_dir / f"{host_name}.mnt", ns_dir / f"{host_name}.uts")


# --------------------------------------------------------------------------- mount table


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mount_points(mountinfo: str | None = None) -> list[str]:
    """Mount points of the caller's mount namespace, in mount order."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    return [_unescape(line.split()[4]) for line in mountinfo.splitlines() if len(line.split()) > 4]


def mounts_under(root: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``root``, deepest (last mounted) first: the order to unmount in."""
    base = str(root.resolve()) if root.exists() else str(root)
    inside = [m for m in mount_points(mountinfo) if m == base or m.startswith(base.rstrip("/") + "/")]
    return list(reversed(inside))


def is_mountpoint(path: Path) -> bool:
    return str(path) in mount_points()


def unmount(point: Path | str) -> None:
    # Lazy: a pinned namespace file is "busy" only in name; detach it regardless.
    system.run(["umount", "--lazy", str(point)], check=False)


def unmount_all_under(root: Path) -> None:
    """Unmount everything at or below ``root`` in the root namespace, deepest first."""
    for point in mounts_under(root):
        unmount(point)
    left = mounts_under(root)
    if left:
        raise LabCommandError(f"could not unmount {', '.join(left)}")


# --------------------------------------------------------------------------- making a host


def bind_in_place(path: Path) -> None:
    """Bind ``path`` onto itself: a mount of its own, which ``make_private`` can then change."""
    system.run(["mount", "--bind", str(path), str(path)])


def make_private(path: Path) -> None:
    """nsfs files can only be pinned on a private mount (no propagation to or from peers)."""
    system.run(["mount", "--make-private", str(path)])


def pin(ns: HostNamespaces) -> None:
    """Make the host's mount and UTS namespaces, pinned to their (existing, empty) files."""
    system.run(["unshare", f"--mount={ns.mnt_file}", f"--uts={ns.uts_file}", "--propagation", "private", "--", "true"])


def set_up(
    ns: HostNamespaces,
    *,
    hostname: str,
    binds: list[tuple[Path, str]],
    hosts_file: Path,
    ns_dir: Path,
) -> None:
    """Inside the pinned namespaces: the host's own directories, /sys, /etc/hosts and name.
    Nothing here needs undoing: it all lives in the host's mount namespace, and goes with it."""
    inside = ns.enter()
    # Copies of the root's pinned namespace files and netns files would keep other hosts'
    # namespaces alive as long as this one lives: drop them here.
    system.run([*inside, "umount", "--lazy", str(ns_dir)], check=False)
    system.run([*inside, "umount", "--lazy", str(NETNS_DIR)], check=False)
    # sysfs shows the network namespace of whoever mounts it: this host's.
    system.run([*inside, "umount", "--lazy", "/sys"])
    system.run([*inside, "mount", "-t", "sysfs", "sysfs", "/sys"])
    for source, target in binds:
        system.run([*inside, "mkdir", "-p", target])
        system.run([*inside, "mount", "--bind", str(source), target])
    system.run([*inside, "mount", "--bind", str(hosts_file), "/etc/hosts"])
    system.run([*inside, "hostname", hostname])


def destroy(ns: HostNamespaces) -> None:
    """Unpin the host's namespaces; they end when their last process has gone too."""
    for pin_file in ns.pins:
        if is_mountpoint(pin_file):
            unmount(pin_file)
