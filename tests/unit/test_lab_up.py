"""``Lab.up`` is transactional: a failure at any step removes exactly what it had made.

Run on ``lab_fakes.FakeMachine`` (``system.run`` replaced by a model of the machine), so every
command of a two-host ``up`` can be made to fail in turn, each time checking that nothing is
left, that the original error is what comes out, and that at the moment of failure everything
that existed was already recorded in state.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flexvm.errors import FlexvmError
from flexvm.lab import Lab, LabSpec, state
from flexvm.lab.system import LabCommandError
from tests.unit.lab_fakes import FakeMachine

SPEC = LabSpec(hosts=2)


def machine_at(base: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    machine = FakeMachine(base)
    machine.install(monkeypatch)
    return machine


def test_up_then_down_on_the_fake_machine_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = machine_at(tmp_path, monkeypatch)
    lab = Lab(tmp_path / "lab")
    up = lab.up(SPEC)
    assert up.phase == "up" and [h.alive for h in up.hosts] == [True, True]
    assert machine.netns == {"flexvm-labsw", "flexvm-lab1", "flexvm-lab2"}
    assert {p.program for p in machine.procs.values() if p.alive} == {"dnsmasq", "virtlogd", "libvirtd"}
    assert machine.unrecorded(lab.root) == []
    lab.down()
    assert machine.leftovers(lab.root) == []


def commands_of_an_up(base: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every command a successful two-host ``up`` runs, in order."""
    machine = machine_at(base, monkeypatch)
    Lab(base / "lab").up(SPEC)
    return machine.commands


def fail_each(
    commands: list[list[str]], indexes: list[int], after: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Run ``up`` once per index, failing that command; what went wrong each time."""
    wrong = []
    for index in indexes:
        base = tmp_path / f"fail-{index}"
        machine = machine_at(base, monkeypatch)
        lab = Lab(base / "lab")
        machine.fail_at, machine.fail_after = index, after
        unrecorded: list[str] = []
        machine.on_fail = lambda m=machine, r=lab.root, out=unrecorded: out.extend(m.unrecorded(r))
        failing = f"#{index} `{' '.join(commands[index])[:120]}`"
        try:
            lab.up(SPEC)
        except LabCommandError as err:
            if err is not machine.raised:
                wrong.append(f"{failing}: raised {err!r}, not the injected failure")
        else:
            wrong.append(f"{failing}: up succeeded")
            continue
        if unrecorded:
            wrong.append(f"{failing}: existed but not recorded when it failed: {unrecorded}")
        left = machine.leftovers(lab.root)
        if left:
            wrong.append(f"{failing}: left {left}")
        if lab.status() is not None:
            wrong.append(f"{failing}: a lab is still recorded")
    return wrong


def test_a_failure_at_any_command_removes_exactly_what_up_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = commands_of_an_up(tmp_path / "count", monkeypatch)
    assert len(commands) > 50, commands
    wrong = fail_each(commands, list(range(len(commands))), False, tmp_path, monkeypatch)
    assert not wrong, f"{len(wrong)} of {len(commands)} injected failures went wrong:\n" + "\n".join(wrong)


def test_a_start_that_fails_after_taking_effect_is_removed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A daemon's start or a namespace pinning that reports failure late (a timeout, say) may
    # have left a process or a pinned file: those are recorded before they are run.
    commands = commands_of_an_up(tmp_path / "count", monkeypatch)
    daemons = ("dnsmasq", "virtlogd", "libvirtd")
    late = [i for i, argv in enumerate(commands) if argv[0] == "unshare" or any(d in argv for d in daemons)]
    assert len(late) == 7, late  # dnsmasq, then per host: unshare, virtlogd, libvirtd
    wrong = fail_each(commands, late, True, tmp_path, monkeypatch)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("at", ["dnsmasq", "libvirtd"])
def test_an_interrupt_is_re_raised_after_the_roll_back(
    at: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = commands_of_an_up(tmp_path / "count", monkeypatch)
    index = next(i for i, argv in enumerate(commands) if at in argv)

    machine = machine_at(tmp_path / "run", monkeypatch)
    machine.fail_at = index
    machine.failure = lambda argv: KeyboardInterrupt()
    lab = Lab(tmp_path / "run" / "lab")
    with pytest.raises(KeyboardInterrupt) as caught:
        lab.up(SPEC)
    assert caught.value is machine.raised
    assert machine.leftovers(lab.root) == []


@pytest.mark.parametrize(
    ("fate", "message"),
    [("dies", "exited before it listened"), ("no pid file", "wrote no usable pid file")],
)
def test_a_daemon_that_fails_after_starting_is_rolled_back(
    fate: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = machine_at(tmp_path, monkeypatch)
    machine.fates[("libvirtd", "flexvm-lab2")] = fate
    lab = Lab(tmp_path / "lab")
    with pytest.raises(LabCommandError, match=message):
        lab.up(SPEC)
    assert machine.leftovers(lab.root) == []
    # The one that "died" is not running; everything started before it was stopped by PID.
    assert all(not p.alive for p in machine.procs.values())


def test_what_was_there_before_is_not_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = machine_at(tmp_path, monkeypatch)
    root = tmp_path / "lab"
    root.mkdir()
    (root / "lab2").write_text("someone's file where lab2's directory would go\n")
    machine.routes.add(("10.213.0.0/24", 4242))  # someone else's blackhole route, the same as ours
    lab = Lab(root)
    with pytest.raises(FlexvmError, match="lab2"):
        lab.up(SPEC)
    assert machine.leftovers(root) == ["route blackhole 10.213.0.0/24 metric 4242", "file lab2"]
    # Failing at lab2's directory, it had started all of lab1: stopped again.
    assert {p.program for p in machine.procs.values()} == {"dnsmasq", "virtlogd", "libvirtd"}
    assert all(not p.alive for p in machine.procs.values())


def test_what_cannot_be_removed_stays_recorded_for_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = machine_at(tmp_path, monkeypatch)
    machine.fates[("virtlogd", "flexvm-lab1")] = "stubborn"
    machine.fates[("libvirtd", "flexvm-lab2")] = "dies"
    lab = Lab(tmp_path / "lab")
    with pytest.raises(LabCommandError, match="exited before it listened") as caught:
        lab.up(SPEC)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "virtlogd" in notes and "lab down" in notes, notes
    record = state.load(lab.state_file)
    assert record is not None and record.phase == "starting"
    kept = [(e["kind"], e.get("name") or e.get("program")) for e in record.made]
    # The daemon that would not die, and its namespace (it still runs in it); all the rest went.
    assert kept == [("netns", "flexvm-lab1"), ("daemon", "virtlogd")], record.made
    assert machine.netns == {"flexvm-lab1"}
    # Once it can be stopped, `down` removes the rest.
    for proc in machine.procs.values():
        proc.stubborn = False
    lab.down()
    assert machine.leftovers(lab.root) == []
