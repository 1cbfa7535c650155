"""The lab: N libvirt hosts simulated on one machine, joined by a lab switch.

::

    root ns: flexlab-gw ══ gw ─[flexvm-labsw: bridge labsw + dnsmasq]─┬─ lab1 ══ uplink ─[flexvm-lab1: br0, libvirtd]
                                                                      └─ lab2 ══ uplink ─[flexvm-lab2: br0, libvirtd]

``Lab(root)`` keeps everything under ``root`` (``state.json``, each host's private
directories, dnsmasq's files). ``up`` records the lab before making anything, and then each
thing as it makes it (``journal``): a failure at any step removes exactly what was made, newest
first, and re-raises. ``down`` removes all of a lab whatever state it is in, from the names in
``state.json`` alone (so also after an ``up`` that was killed): guests (through each host's
libvirtd, then by PID), daemons by PID, the pinned namespaces, network namespaces, the one
root-namespace link and route, files.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import uuid
from pathlib import Path

from flexvm.errors import Conflict, FlexvmError, InvalidState, NotFound
from flexvm.lab import config, daemons, guests, mountns, netns, processes, state, system
from flexvm.lab.journal import DAEMON_GRACE, Journal
from flexvm.lab.model import LabHost, LabSpec, LabState
from flexvm.lab.plan import (
    BLACKHOLE_METRIC,
    GATEWAY_LINK,
    GATEWAY_PEER,
    HOST_BRIDGE,
    HOST_NETNS_PREFIX,
    HOST_UPLINK,
    PRIVATE_DIRS,
    SHARED_PATH,
    SWITCH_BRIDGE,
    SWITCH_NETNS,
    HostPlan,
    LabPlan,
    check_no_overlap,
    check_spec,
    make_plan,
    plan_for_state,
)
from flexvm.lab.system import LabCommandError

SYSTEM_LIBVIRT_ETC = Path("/etc/libvirt")
SYSTEM_QEMU_CAPS = Path("/var/cache/libvirt/qemu/capabilities")
QEMU_GRACE = 5.0
PROC_FILESYSTEMS = Path("/proc/filesystems")


def sharing_note(filesystems: str | None = None) -> str:
    """How the lab's shared storage is shared, for the user: a bind mount of one directory into
    every host. Real NFS between lab namespaces would need the kernel's NFS server and client;
    this says which of them the kernel lacks (and that NFS is not built yet where it has both)."""
    text = PROC_FILESYSTEMS.read_text() if filesystems is None else filesystems
    offered = {line.split()[-1] for line in text.splitlines() if line.split()}
    missing = [fs for fs in ("nfsd", "nfs") if fs not in offered]
    if missing:
        why = f"this kernel offers no {' or '.join(missing)} (not in /proc/filesystems)"
    else:
        why = "NFS between lab namespaces is not built yet"
    return f"shared by bind-mount of one directory into every host: {why}"


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    # ------------------------------------------------------------------ public API

    def up(self, spec: LabSpec) -> LabState:
        """Make the lab and return its status once every host's libvirtd listens.

        InvalidInput for a bad spec (including a subnet overlapping the machine's networks),
        Conflict when a lab is up already, ProgramMissing naming the Debian packages when a
        program is missing. A failed ``up`` removes exactly what it made, newest first, then
        raises the original error (anything not a FlexvmError wrapped in one, chained)."""
        subnet = check_spec(spec)
        system.require_tools()
        with state.locked(self.lock_file):
            try:
                self._refuse_if_up()
                check_no_overlap(subnet, netns.machine_networks())
            except FlexvmError:
                self._tidy_root()
                raise
            plan = make_plan(self.root, spec.hosts, subnet, shared=spec.shared_storage)
            journal = Journal(plan.to_state(phase="starting"), plan.state_file)
            journal.save()  # before anything is made: from here on `down` can always find the lab
            try:
                self._build(plan, journal)
                journal.record.phase = "up"
                journal.save()
                current = self.status()  # an up that raises has made nothing, even if only this look fails
                assert current is not None
            except BaseException as err:
                self._roll_back(journal, err)
                if isinstance(err, FlexvmError | KeyboardInterrupt | SystemExit):
                    raise
                raise FlexvmError(f"lab up failed: {err}") from err
        return current

    def status(self) -> LabState | None:
        """The recorded lab with each host's live PIDs and ``alive`` flag; None when no lab.
        Checking sends nothing over the network (see ``daemons.listening``)."""
        record = state.load(self.state_file)
        if record is None:
            return None
        for host in record.hosts:
            pids = {}
            for kind in record.daemons:
                pid = self._daemon_pid(host.root, host.netns, kind, host.pids.get(kind))
                if pid is not None:
                    pids[kind] = pid
            host.pids = pids
            host.alive = "libvirtd" in pids and self._answers(pids["libvirtd"], host.address)
        if record.dnsmasq_pid and not processes.is_ours(record.dnsmasq_pid, "dnsmasq", SWITCH_NETNS):
            record.dnsmasq_pid = 0
        return record

    def down(self) -> None:
        """Remove every guest, process, mount, namespace, interface, route and file of the lab.
        Works after an interrupted or failed ``up`` and with processes already dead; a no-op
        when no lab is recorded here."""
        with state.locked(self.lock_file):
            record = state.load(self.state_file)
            if record is None:
                self._tidy_root()
                return
            self._teardown(plan_for_state(self.root, record), record)

    def stop_host(self, name: str) -> None:
        """SIGKILL the host's libvirtd, as a crash would; its guests (and virtlogd) keep running."""
        with state.locked(self.lock_file):
            record, host = self._host(name)
            pid = self._daemon_pid(host.root, host.netns, "libvirtd", host.pids.get("libvirtd"))
            if pid is not None:
                left = processes.kill([pid])
                if left:
                    raise FlexvmError(f"libvirtd of {name} (PID {pid}) survived SIGKILL")
            host.pids.pop("libvirtd", None)
            state.save(self.state_file, record)

    def start_host(self, name: str) -> None:
        """Start the host's libvirtd again (and virtlogd, if that died too); wait until it listens."""
        with state.locked(self.lock_file):
            record, host = self._host(name)
            plan = plan_for_state(self.root, record)
            host_plan = plan.host(name)
            assert host_plan is not None
            ns = mountns.namespaces_for(plan.ns_dir, name, host.netns)
            if not netns.exists(host.netns) or not ns.pinned:
                raise InvalidState(
                    f"lab host {name} has lost its namespaces; recreate the lab (`flexvm lab down`, then `up`)"
                )
            for kind in record.daemons:
                pid = self._daemon_pid(host.root, host.netns, kind, host.pids.get(kind))
                if pid is None:
                    pid = daemons.start_host_daemon(host_plan, ns, kind)
                host.pids[kind] = pid
            self._wait_listening(host_plan, host.pids["libvirtd"])
            state.save(self.state_file, record)

    # ------------------------------------------------------------------ power and network
    # What a lab host's "hardware" does: its power switch (every process in it killed, as a
    # power cut would), its network cable (the switch port), and a restart of its hypervisor.

    def power_off(self, name: str) -> list[int]:
        """Cut the host's power: SIGKILL its daemons, its guests and anything else in its
        namespace. Returns the PIDs killed; raises if one survives."""
        with state.locked(self.lock_file):
            record, host = self._host(name)
            killed = self.processes_of(name)
            left = processes.kill(killed)
            if left:
                raise FlexvmError(f"lab host {name}: PIDs {', '.join(map(str, left))} survived SIGKILL")
            host.pids = {}
            state.save(self.state_file, record)
            return killed

    def processes_of(self, name: str) -> list[int]:
        """Every process running in the host's network namespace (its daemons, QEMU guests)."""
        _record, host = self._host(name)
        return [pid for pid in netns.pids(host.netns) if processes.in_namespace(pid, host.netns)]

    def switch_port_up(self, name: str) -> bool:
        """Whether the lab switch's port to the host is up (``partition`` takes it down)."""
        return netns.is_up(SWITCH_NETNS, self._switch_port(name))

    def libvirtd_running(self, name: str) -> bool:
        return self.daemon_pid(name, "libvirtd") is not None

    def daemon_pid(self, name: str, kind: str) -> int | None:
        """The PID of the host's running daemon of that kind (libvirtd, virtlogd), if one runs."""
        _record, host = self._host(name)
        return self._daemon_pid(host.root, host.netns, kind, host.pids.get(kind))

    def partition(self, name: str) -> None:
        """Cut the host off the lab network (its switch port down): it and its guests keep
        running, but nothing reaches them and they reach nothing."""
        with state.locked(self.lock_file):
            netns.down(SWITCH_NETNS, self._switch_port(name))

    def heal(self, name: str) -> None:
        with state.locked(self.lock_file):
            netns.up(SWITCH_NETNS, self._switch_port(name))

    def restart_hypervisor(self, name: str) -> None:
        """What a hypervisor update does: libvirtd and virtlogd stop and start again, while the
        guests keep running (libvirtd finds them again; virtlogd re-executes itself in place,
        keeping the guests' console logs open)."""
        with state.locked(self.lock_file):
            _record, host = self._host(name)
            virtlogd = self._daemon_pid(host.root, host.netns, "virtlogd", host.pids.get("virtlogd"))
            if virtlogd is not None:
                processes.signal_pid(virtlogd, signal.SIGUSR1)  # virtlogd(8): re-exec, keeping its files
            libvirtd = self._daemon_pid(host.root, host.netns, "libvirtd", host.pids.get("libvirtd"))
            if libvirtd is not None and processes.stop([libvirtd], grace=DAEMON_GRACE):
                raise FlexvmError(f"libvirtd of {name} (PID {libvirtd}) would not stop")
        self.start_host(name)

    # ------------------------------------------------------------------ building

    def _refuse_if_up(self) -> None:
        record = state.load(self.state_file)
        if record is not None:
            what = "is up" if record.phase == "up" else "was being started (or its `up` was interrupted)"
            raise Conflict(
                f"a lab {what} in {self.root}: {len(record.hosts)} host(s) on {record.subnet}. "
                "See it with `flexvm lab status`; stop it with `flexvm lab down`",
                details={"root": str(self.root), "phase": record.phase},
            )
        leftovers = netns.names(HOST_NETNS_PREFIX) + netns.root_links(GATEWAY_LINK)
        if leftovers:
            raise Conflict(
                f"another lab seems up on this machine ({', '.join(leftovers)} exist) but not in {self.root}: "
                "stop it with `flexvm lab down` under the FLEXVM_HOME that started it",
                details={"found": leftovers},
            )

    def _build(self, plan: LabPlan, journal: Journal) -> None:
        record = journal.record
        for path in (plan.switch_dir, plan.dhcp_hosts_dir, plan.ns_dir):
            journal.make_dir(path)
        if plan.shared:
            journal.make_dir(plan.shared_dir)
            plan.shared_dir.chmod(0o755)  # QEMU (libvirt-qemu) opens the disks there
            record.shared_how = sharing_note()
        if netns.add_blackhole(str(plan.subnet), BLACKHOLE_METRIC):
            journal.made("route", subnet=str(plan.subnet), metric=BLACKHOLE_METRIC)
        self._build_switch(plan, journal)
        # A daemon is recorded before it starts: one whose start fails late may run all the same.
        journal.made("daemon", program="dnsmasq", netns=SWITCH_NETNS, pid_file=str(plan.dnsmasq_pid_file))
        record.dnsmasq_pid = daemons.start_dnsmasq(plan)
        journal.save()
        mountns.bind_in_place(plan.ns_dir)
        journal.made("mount", path=str(plan.ns_dir))
        mountns.make_private(plan.ns_dir)
        for host_plan, host in zip(plan.hosts, record.hosts, strict=True):
            self._build_host(plan, host_plan, host, journal)
        for host_plan, host in zip(plan.hosts, record.hosts, strict=True):
            self._wait_listening(host_plan, host.pids["libvirtd"])

    @staticmethod
    def _build_switch(plan: LabPlan, journal: Journal) -> None:
        # What is made inside the namespace (bridge, addresses) goes with it: no entries of its own.
        netns.add(SWITCH_NETNS)
        journal.made("netns", name=SWITCH_NETNS)
        netns.up(SWITCH_NETNS, "lo")
        netns.add_bridge(SWITCH_NETNS, SWITCH_BRIDGE)
        netns.add_address(SWITCH_NETNS, SWITCH_BRIDGE, plan.switch_address, plan.prefix)
        netns.up(SWITCH_NETNS, SWITCH_BRIDGE)
        netns.add_veth(GATEWAY_LINK, None, GATEWAY_PEER, SWITCH_NETNS)
        journal.made("link", netns=None, name=GATEWAY_LINK)
        netns.enslave(SWITCH_NETNS, GATEWAY_PEER, SWITCH_BRIDGE)
        netns.up(SWITCH_NETNS, GATEWAY_PEER)
        netns.add_address(None, GATEWAY_LINK, plan.gateway, plan.prefix)
        netns.up(None, GATEWAY_LINK)

    def _build_host(self, plan: LabPlan, host: HostPlan, record: LabHost, journal: Journal) -> None:
        netns.add(host.netns)
        journal.made("netns", name=host.netns)
        netns.up(host.netns, "lo")
        netns.add_veth(host.switch_port, SWITCH_NETNS, HOST_UPLINK, host.netns)
        journal.made("link", netns=SWITCH_NETNS, name=host.switch_port)
        netns.enslave(SWITCH_NETNS, host.switch_port, SWITCH_BRIDGE)
        netns.up(SWITCH_NETNS, host.switch_port)
        netns.add_bridge(host.netns, HOST_BRIDGE)
        netns.enslave(host.netns, HOST_UPLINK, HOST_BRIDGE)
        netns.add_address(host.netns, HOST_BRIDGE, host.address, plan.prefix)
        netns.up(host.netns, HOST_UPLINK)
        netns.up(host.netns, HOST_BRIDGE)
        journal.make_dir(host.root)
        self._write_private_dirs(plan, host)
        ns = mountns.namespaces_for(plan.ns_dir, host.name, host.netns)
        for pin_file in ns.pins:
            pin_file.touch(exist_ok=False)
            journal.made("file", path=str(pin_file))
        # Recorded first: an unshare that fails half-way may have pinned one of the two.
        journal.made("pins", netns=host.netns, mnt=str(ns.mnt_file), uts=str(ns.uts_file))
        mountns.pin(ns)
        mountns.set_up(
            ns,
            hostname=host.name,
            # Shared storage last: its mount point is inside the host's own /var/lib/libvirt.
            binds=[(host.private_dir(key), target) for key, target in PRIVATE_DIRS]
            + ([(plan.shared_dir, SHARED_PATH)] if plan.shared else []),
            hosts_file=host.hosts_file,
            ns_dir=plan.ns_dir,
        )
        for kind in journal.record.daemons:
            journal.made("daemon", program=kind, netns=host.netns, pid_file=str(host.pid_file(kind)))
            record.pids[kind] = daemons.start_host_daemon(host, ns, kind)
            journal.save()

    def _roll_back(self, journal: Journal, err: BaseException) -> None:
        """After a failed ``up``: remove what it made, newest first. What cannot be removed stays
        recorded in state.json (for ``down`` to retry), and ``err`` says so."""
        problems = journal.undo()
        if problems:
            err.add_note(
                "removing what it had made failed for: " + "; ".join(problems)
                + f"; still recorded in {self.state_file}: remove it with `flexvm lab down`"
            )  # fmt: skip
            return
        self.state_file.unlink(missing_ok=True)
        self._tidy_root()

    @staticmethod
    def _write_private_dirs(plan: LabPlan, host: HostPlan) -> None:
        for key, _target in PRIVATE_DIRS:
            host.private_dir(key).mkdir(parents=True, exist_ok=True)
        etc = host.private_dir("etc")
        for source in config.seed_files(SYSTEM_LIBVIRT_ETC):
            shutil.copy2(source, etc / source.name)
        libvirtd_conf = etc / "libvirtd.conf"
        text = libvirtd_conf.read_text() if libvirtd_conf.exists() else ""
        settings = config.libvirtd_settings(host.address, str(uuid.uuid4()))
        libvirtd_conf.write_text(config.set_conf_keys(text, settings))
        host.hosts_file.write_text(config.hosts_file(plan))
        if plan.shared:
            qemu_conf = etc / "qemu.conf"
            text = qemu_conf.read_text() if qemu_conf.exists() else ""
            qemu_conf.write_text(config.set_conf_keys(text, config.QEMU_LOCK_SETTINGS))
        # QEMU's capabilities, probed by the machine's libvirtd for the same binaries: a copy
        # spares each host that probe (libvirt checks the cache is still valid and reprobes if not).
        if SYSTEM_QEMU_CAPS.is_dir():
            shutil.copytree(SYSTEM_QEMU_CAPS, host.private_dir("cache") / "qemu" / "capabilities", dirs_exist_ok=True)

    def _wait_listening(self, host: HostPlan, pid: int) -> None:
        if not self._reachable_route(host.address):
            raise LabCommandError(
                f"the root namespace would not send {host.address} to the lab link {GATEWAY_LINK}; not connecting"
            )
        daemons.wait_listening(host.address, pid, f"libvirtd of {host.name}")

    # ------------------------------------------------------------------ tearing down

    def _teardown(self, plan: LabPlan, record: LabState) -> None:
        """Remove everything ``plan`` names, whatever state it is in. If a process will not die
        or a mount will not go, the rest is still removed but ``state.json`` is kept (so ``down``
        can be run again) and the error names what is left."""
        for host_plan, host in zip(plan.hosts, record.hosts, strict=True):
            pid = self._daemon_pid(host_plan.root, host_plan.netns, "libvirtd", host.pids.get("libvirtd"))
            if pid is not None and self._answers(pid, host_plan.address):
                # Failing here is fine: the PID sweep below ends whatever guests are left.
                with contextlib.suppress(Exception):
                    guests.destroy_all(host_plan.uri)
        problems = self._stop_processes(plan, record)
        for host_plan in plan.hosts:
            mountns.destroy(mountns.namespaces_for(plan.ns_dir, host_plan.name, host_plan.netns))
        try:
            mountns.unmount_all_under(self.root)
        except LabCommandError as err:
            problems.append(str(err))
        netns.delete_link(None, GATEWAY_LINK)
        for host_plan in plan.hosts:
            netns.delete(host_plan.netns)
        netns.delete(SWITCH_NETNS)
        netns.delete_blackhole(str(plan.subnet), BLACKHOLE_METRIC)
        if problems:
            raise FlexvmError(
                "lab down left something behind: " + "; ".join(problems) + f"; run it again, or see {plan.state_file}"
            )
        self._remove_files(plan)

    def _stop_processes(self, plan: LabPlan, record: LabState) -> list[str]:
        """Daemons by PID, then QEMU by its pid files, then anything still in a lab namespace."""
        daemon_pids = []
        for host_plan, host in zip(plan.hosts, record.hosts, strict=True):
            for kind in record.daemons:
                pid = self._daemon_pid(host_plan.root, host_plan.netns, kind, host.pids.get(kind))
                if pid is not None:
                    daemon_pids.append(pid)
        dnsmasq = processes.read_pid_file(plan.dnsmasq_pid_file) or record.dnsmasq_pid
        if dnsmasq and processes.is_ours(dnsmasq, "dnsmasq", SWITCH_NETNS):
            daemon_pids.append(dnsmasq)
        survivors = processes.stop(daemon_pids, grace=DAEMON_GRACE)
        qemu = [
            pid
            for host_plan in plan.hosts
            for pid in processes.qemu_pids(host_plan.qemu_pid_dir)
            if processes.is_ours(pid, "qemu", host_plan.netns)
        ]
        survivors += processes.stop(qemu, grace=QEMU_GRACE)
        for name in [h.netns for h in plan.hosts] + [SWITCH_NETNS]:
            strays = [p for p in netns.pids(name) if processes.in_namespace(p, name)]
            survivors += processes.kill(strays)
        return [f"PID {pid} would not die" for pid in survivors]

    def _remove_files(self, plan: LabPlan) -> None:
        left = mountns.mounts_under(self.root)
        if left:  # never delete through a mount
            raise FlexvmError(f"not removing {self.root}: still mounted there: {', '.join(left)}")
        for path in plan.owned_paths():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self._tidy_root()

    def _tidy_root(self) -> None:
        """Remove the lock file and the root itself when nothing else is in it."""
        if not self.state_file.exists():
            self.lock_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty (someone else's files), or already gone
            self.root.rmdir()

    # ------------------------------------------------------------------ helpers

    def _host(self, name: str) -> tuple[LabState, LabHost]:
        record = state.load(self.state_file)
        if record is None:
            raise InvalidState(f"no lab is up in {self.root}; start one with `flexvm lab up`")
        host = record.host(name)
        if host is None:
            raise NotFound("lab host", name)
        return record, host

    def _switch_port(self, name: str) -> str:
        record, _host = self._host(name)
        host_plan = plan_for_state(self.root, record).host(name)
        assert host_plan is not None
        return host_plan.switch_port

    @staticmethod
    def _daemon_pid(host_root: Path, netns_name: str, kind: str, recorded: int | None) -> int | None:
        """The running daemon's PID: its pid file first (it rewrites it on each start), else the
        recorded one; only a PID proven to be that daemon in that namespace."""
        pid_file = host_root / "run" / f"{kind}.pid"
        for pid in (processes.read_pid_file(pid_file), recorded):
            if pid and processes.is_ours(pid, kind, netns_name):
                return pid
        return None

    @staticmethod
    def _reachable_route(address: str) -> bool:
        return netns.route_device(address) == GATEWAY_LINK

    def _answers(self, pid: int, address: str) -> bool:
        """libvirtd listens on its lab address, and the root namespace routes there (via the lab link)."""
        return daemons.listening(pid, address) and self._reachable_route(address)
