"""A pretend machine for the lab's unit tests: ``system.run`` answered by a model of what each
command the lab runs would do (network namespaces, links, routes, mounts, daemons), so a whole
``Lab.up`` runs here without root or a single real command, and can be made to fail at any one.

Only what the lab really runs is modelled; any other command fails the test. Every program
must be listed in ``flexvm.programs`` (the real runner would refuse it). Processes are fake PIDs
far above any kernel's ``pid_max``, and ``processes.signal_pid`` is replaced too, so nothing here
can ever signal a real process.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from flexvm import programs
from flexvm.lab import daemons, guests, mountns, netns, processes, state, system
from flexvm.lab import lab as lab_module
from flexvm.lab.plan import GATEWAY_LINK
from flexvm.lab.system import LabCommandError

FIRST_PID = 10**9  # above any pid_max (at most 2**22)

Link = tuple[str | None, str]  # (namespace, None for the root one; name)


@dataclass
class FakeProcess:
    program: str
    netns: str
    ns_id: tuple[int, int]
    alive: bool = True
    stubborn: bool = False  # ignores every signal
    dies: bool = False  # exits as soon as anyone waits for it to listen


class FakeMachine:
    def __init__(self, base: Path) -> None:
        self.netns_dir = base / "run-netns"
        self.netns_dir.mkdir(parents=True)
        self.etc_libvirt = base / "etc-libvirt"
        self.etc_libvirt.mkdir()
        (self.etc_libvirt / "libvirtd.conf").write_text("#listen_tls = 0\n")
        self.netns: set[str] = set()
        self.links: dict[Link, Link | None] = {}  # each end, and its veth peer
        self.routes: set[tuple[str, int]] = set()
        self.mounts: list[str] = []  # the root namespace's mount points, in mount order
        self.binds: dict[str, dict[str, str]] = {}  # a host's pinned mnt file -> {target: source}
        self.procs: dict[int, FakeProcess] = {}
        self.commands: list[list[str]] = []
        # Failure injection: raise ``failure()`` instead of running command number ``fail_at``,
        # or with ``fail_after`` once it has taken effect (as a start that times out late would).
        self.fail_at: int | None = None
        self.fail_after = False
        self.failure: Callable[[list[str]], BaseException] = lambda argv: LabCommandError(
            f"injected failure of `{' '.join(argv)}`"
        )
        self.raised: BaseException | None = None
        self.on_fail: Callable[[], None] | None = None  # called just before the failure is raised
        # What a started daemon does: "runs" (the default), "dies" (exits before it listens),
        # "no pid file" (never writes one), "stubborn" (ignores every signal).
        self.fates: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ installing

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(system, "run", self.run)
        monkeypatch.setattr(system, "require_tools", lambda: None)  # programs are checked per command here
        monkeypatch.setattr(netns, "NETNS_DIR", self.netns_dir)
        monkeypatch.setattr(mountns, "mount_points", lambda mountinfo=None: list(self.mounts))
        monkeypatch.setattr(processes, "running", self._running)
        monkeypatch.setattr(processes, "comm", self._comm)
        monkeypatch.setattr(processes, "net_ns", self._net_ns)
        monkeypatch.setattr(processes, "signal_pid", self._signal)
        monkeypatch.setattr(daemons, "listening", self._listening)
        monkeypatch.setattr(guests, "destroy_all", lambda uri, timeout=0: [])
        monkeypatch.setattr(lab_module, "SYSTEM_LIBVIRT_ETC", self.etc_libvirt)
        monkeypatch.setattr(lab_module, "SYSTEM_QEMU_CAPS", self.etc_libvirt / "no-caps")
        monkeypatch.setattr(daemons, "PID_FILE_PATIENCE", 0.3)
        monkeypatch.setattr(daemons, "LISTEN_PATIENCE", 0.3)
        monkeypatch.setattr(processes, "wait_gone", self._wait_gone)

    # ------------------------------------------------------------------ what is left

    def leftovers(self, root: Path) -> list[str]:
        """Everything of a lab on this pretend machine, described; empty when all is gone."""
        left = [f"netns {n}" for n in sorted(self.netns)]
        left += [f"netns file {p.name}" for p in sorted(self.netns_dir.iterdir())]
        left += [f"link {ns or 'root'}/{name}" for ns, name in sorted(self.links, key=str)]
        left += [f"route blackhole {s} metric {m}" for s, m in sorted(self.routes)]
        left += [f"mount {m}" for m in self.mounts]
        left += [f"{p.program} (PID {pid}) in {p.netns}" for pid, p in self.procs.items() if p.alive]
        if root.exists():
            left += [f"file {p.relative_to(root)}" for p in sorted(root.rglob("*"))]
        return left

    def unrecorded(self, root: Path) -> list[str]:
        """What exists now but is not in state.json's ``made`` list: what a crash right now
        would leave without a record of it. Things inside a namespace go with it."""
        record = state.load(root / "state.json")
        made = record.made if record is not None else []

        def has(kind: str, **fields: object) -> bool:
            return any(e["kind"] == kind and all(e.get(k) == v for k, v in fields.items()) for e in made)

        missing = [f"netns {n}" for n in self.netns if not has("netns", name=n)]
        missing += [f"root link {name}" for ns, name in self.links if ns is None and not has("link", name=name)]
        missing += [f"route {s}" for s, m in self.routes if not has("route", subnet=s, metric=m)]
        for point in self.mounts:
            if not (has("mount", path=point) or has("pins", mnt=point) or has("pins", uts=point)):
                missing.append(f"mount {point}")
        for pid, proc in self.procs.items():
            if proc.alive and not has("daemon", program=proc.program, netns=proc.netns):
                missing.append(f"{proc.program} (PID {pid})")
        if root.exists():
            for path in root.iterdir():
                if path.name not in ("state.json", ".lock") and not has("dir", path=str(path)):
                    missing.append(f"dir {path.name}")
        return missing

    # ------------------------------------------------------------------ the runner

    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 60.0, log: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        _check_listed(argv)
        index = len(self.commands)
        self.commands.append(argv)
        if index == self.fail_at and not self.fail_after:
            self._fail(argv)
        out, code = self._do(argv)
        if index == self.fail_at:
            self._fail(argv)
        if check and code != 0:
            raise LabCommandError(f"`{' '.join(argv)}` failed ({code}): {out}")
        return subprocess.CompletedProcess(argv, code, out, "")

    def _fail(self, argv: list[str]) -> None:
        if self.on_fail is not None:
            self.on_fail()
        self.raised = self.failure(argv)
        raise self.raised

    def _do(self, argv: list[str]) -> tuple[str, int]:
        program, args = argv[0], argv[1:]
        if program == "ip":
            return self._ip(args)
        if program == "mount" and args[0] == "--bind":
            source, target = args[1], args[2]
            if not Path(source).exists():
                return f"mount: {source}: no such file", 32
            self.mounts.append(target)
            return "", 0
        if program == "mount" and args[0] == "--make-private":
            return ("", 0) if args[1] in self.mounts else (f"mount: {args[1]}: not mount point", 32)
        if program == "umount" and args[0] == "--lazy":
            point = args[1]
            if point not in self.mounts:
                return f"umount: {point}: not mounted", 32
            self.mounts = [m for m in self.mounts if m != point and not m.startswith(point.rstrip("/") + "/")]
            return "", 0
        if program == "unshare":
            files = [a.split("=", 1)[1] for a in args if a.startswith(("--mount=", "--uts="))]
            assert args[args.index("--") + 1 :] == ["true"], argv
            for pin in files:
                if not Path(pin).is_file() or pin in self.mounts:
                    return f"unshare: cannot pin {pin}", 1
            self.mounts += files
            self.binds[files[0]] = {}
            return "", 0
        if program == "nsenter":
            return self._nsenter(args)
        raise AssertionError(f"the fake machine does not know `{' '.join(argv)}`")

    def _ip(self, args: list[str]) -> tuple[str, int]:
        ns = None
        if args[0] == "-n":
            ns, args = args[1], args[2:]
            if ns not in self.netns:
                return f'Cannot open network namespace "{ns}"', 1
        as_json = False
        while args[0] in ("-j", "-o", "-4"):
            as_json = as_json or args[0] == "-j"
            args = args[1:]
        match args:
            case ["netns", "add", name]:
                if name in self.netns:
                    return f'Cannot create namespace file "{name}": File exists', 1
                self.netns.add(name)
                self.links[(name, "lo")] = None  # every namespace has its loopback
                (self.netns_dir / name).touch()
                return "", 0
            case ["netns", "delete", name]:
                self.netns.discard(name)
                (self.netns_dir / name).unlink(missing_ok=True)
                for end in [e for e in self.links if e[0] == name]:
                    self._delete_link(end)
                return "", 0
            case ["netns", "pids", name]:
                return " ".join(str(pid) for pid, p in self.procs.items() if p.alive and p.netns == name), 0
            case ["link", "add", name, "type", "bridge", *_]:
                return self._add_link((ns, name), None)
            case ["link", "add", name, *rest] if "veth" in rest:
                where = rest[1] if rest[0] == "netns" else None
                peer_name, peer_ns = rest[rest.index("peer") + 2], rest[rest.index("peer") + 4]
                if peer_ns not in self.netns or (where is not None and where not in self.netns):
                    return "Invalid namespace", 1
                out, code = self._add_link((where, name), (peer_ns, peer_name))
                return (out, code) if code else self._add_link((peer_ns, peer_name), (where, name))
            case ["link", "set", device, *_] | ["addr", "add", _, "dev", device]:
                return ("", 0) if (ns, device) in self.links else (f'Cannot find device "{device}"', 1)
            case ["link", "show", "dev", device]:
                return (f"7: {device}: <UP>", 0) if (ns, device) in self.links else ("", 1)
            case ["link", "delete", device]:
                if (ns, device) not in self.links:
                    return f'Cannot find device "{device}"', 1
                self._delete_link((ns, device))
                return "", 0
            case ["link", "show"]:
                return json.dumps([{"ifname": name} for where, name in self.links if where is None]), 0
            case ["route", "show", "type", "blackhole", subnet]:
                return json.dumps([{"dst": s, "metric": m} for s, m in self.routes if s == subnet]), 0
            case ["route", "add", "blackhole", subnet, "metric", metric]:
                self.routes.add((subnet, int(metric)))
                return "", 0
            case ["route", "delete", "blackhole", subnet, "metric", metric]:
                self.routes.discard((subnet, int(metric)))
                return "", 0
            case ["route", "show", "table", "all"] | ["addr", "show"]:
                return "[]", 0
            case ["route", "get", address]:
                device = GATEWAY_LINK if (None, GATEWAY_LINK) in self.links else "eth0"
                return json.dumps([{"dst": address, "dev": device}]), 0
        raise AssertionError(f"the fake machine does not know `ip {' '.join(args)}` (in {ns})")

    def _add_link(self, end: Link, peer: Link | None) -> tuple[str, int]:
        if end in self.links:
            return "RTNETLINK answers: File exists", 2
        self.links[end] = peer
        return "", 0

    def _delete_link(self, end: Link) -> None:
        peer = self.links.pop(end, None)
        if peer is not None:
            self.links.pop(peer, None)

    def _nsenter(self, args: list[str]) -> tuple[str, int]:
        split = args.index("--")
        options = dict(a[2:].split("=", 1) for a in args[:split])
        inner = args[split + 1 :]
        name = Path(options["net"]).name
        if name not in self.netns:
            return f"nsenter: cannot open {options['net']}", 1
        mnt = options.get("mount")
        if mnt is not None and mnt not in self.mounts:
            return f"nsenter: cannot open {mnt}", 1
        program = inner[0]
        if program == "mount" and inner[1] == "--bind":
            assert mnt is not None
            self.binds[mnt][inner[3]] = inner[2]
        elif program in ("dnsmasq", "virtlogd", "libvirtd"):
            pid_file = self._pid_file(inner, mnt)
            return self._start(program, name, pid_file)
        elif program not in ("umount", "mount", "mkdir", "hostname"):
            raise AssertionError(f"the fake machine does not know `{' '.join(inner)}` inside {name}")
        return "", 0

    def _pid_file(self, argv: list[str], mnt: str | None) -> Path:
        """Where the daemon's pid file lands, seen from the root namespace (through the host's binds)."""
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--pid-file=")), None)
        if path is None:
            path = argv[argv.index("--pid-file") + 1]
        for target, source in (self.binds.get(mnt, {}) if mnt else {}).items():
            if path.startswith(target + "/"):
                return Path(source) / path[len(target) + 1 :]
        return Path(path)

    def _start(self, program: str, name: str, pid_file: Path) -> tuple[str, int]:
        fate = self.fates.get((program, name), "runs")
        inode = netns.inode(name)
        assert inode is not None
        pid = FIRST_PID + len(self.procs)
        self.procs[pid] = FakeProcess(program, name, inode, stubborn=fate == "stubborn", dies=fate == "dies")
        if fate != "no pid file":
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(f"{pid}\n")
        return "", 0

    # ------------------------------------------------------------------ processes

    def _running(self, pid: int) -> bool:
        proc = self.procs.get(pid)
        return proc is not None and proc.alive

    def _comm(self, pid: int) -> str | None:
        proc = self.procs.get(pid)
        return proc.program if proc is not None and proc.alive else None

    def _net_ns(self, pid: int | str) -> tuple[int, int] | None:
        if pid == "self":
            return (0, 0)
        proc = self.procs.get(int(pid))
        return proc.ns_id if proc is not None else None

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        proc = self.procs.get(pid)
        assert proc is not None, f"the lab signalled PID {pid}, which it never started"
        if not proc.stubborn:
            proc.alive = False

    def _wait_gone(self, pids: list[int], timeout: float) -> list[int]:
        return [p for p in pids if self._running(p)]

    def _listening(self, pid: int, address: str, port: int = 16509) -> bool:
        proc = self.procs.get(pid)
        if proc is not None and proc.dies:
            proc.alive = False
        return self._running(pid) and self.procs[pid].program == "libvirtd"


def _check_listed(argv: list[str]) -> None:
    """What the real runner checks when it finds each program: listed, wrapped commands too."""
    assert argv[0] in programs.PROGRAMS, f"{argv[0]} is not in flexvm.programs.PROGRAMS"
    if argv[0] in programs.WRAPPERS and "--" in argv:
        _check_listed(argv[argv.index("--") + 1 :])
