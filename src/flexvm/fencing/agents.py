"""The fence agent interface, the options each kind takes, and the agent of a host.

Kinds (``model.host.FenceAgent``): ``lab`` (the lab's power switch and network), ``ipmi`` (the
host's management controller through ipmitool), ``manual`` (an operator's word that the machine is
off; there is nothing to ask), and ``none`` (no fencing: a host that stops answering is only
marked down, and its VMs never run elsewhere).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from flexvm.errors import FenceFailed, InvalidInput
from flexvm.model.host import FenceAgent, Host


@dataclass(frozen=True)
class Opinion:
    """A second look at a host that misses its health checks."""

    confirms: bool  # the agent's own path cannot reach the host either: it has failed
    seen: str  # what the agent saw, in a sentence


class Fencer(ABC):
    kind: FenceAgent
    automatic = True  # False: fencing waits for an operator's confirmation

    def __init__(self, host_name: str, options: dict[str, str]) -> None:
        self.host_name = host_name
        self.options = options

    @abstractmethod
    def second_opinion(self) -> Opinion: ...

    @abstractmethod
    def power_off(self) -> str:
        """Power the host off; returns what was done. Raises FenceFailed."""

    @abstractmethod
    def confirm_off(self) -> str:
        """Returns how it is known to be off; raises FenceFailed when that cannot be shown."""


class ManualFencer(Fencer):
    """No agent can reach the machine: an operator checks it is off and says so."""

    kind = FenceAgent.MANUAL
    automatic = False

    def second_opinion(self) -> Opinion:
        return Opinion(True, "no second look is possible (manual fencing): an operator confirms it is off")

    def power_off(self) -> str:
        raise FenceFailed(f"host {self.host_name} is fenced by hand: an operator must confirm that it is off")

    def confirm_off(self) -> str:
        raise FenceFailed(f"host {self.host_name} is fenced by hand: an operator must confirm that it is off")


# Options each kind takes: name -> whether it is required.
OPTIONS: dict[FenceAgent, dict[str, bool]] = {
    FenceAgent.NONE: {},
    FenceAgent.MANUAL: {},
    FenceAgent.LAB: {"root": True, "host": True},
    FenceAgent.IPMI: {"address": True, "user": True, "password_file": True, "interface": False},
}


def check_options(kind: FenceAgent, options: dict[str, str]) -> None:
    """Refuse options the kind does not take, or lacks, naming each."""
    known = OPTIONS[kind]
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise InvalidInput(
            "fence_options", f"fence agent {kind.value} does not take {', '.join(unknown)} (it takes: {takes})"
        )
    missing = sorted(k for k, required in known.items() if required and not options.get(k))
    if missing:
        raise InvalidInput("fence_options", f"fence agent {kind.value} needs {', '.join(missing)}")
    if kind is FenceAgent.IPMI:
        from flexvm.fencing.ipmi import check_ipmi_options

        check_ipmi_options(options)


def fencer_for(host: Host) -> Fencer | None:
    """The host's agent; None when it has none."""
    if host.fence_agent is FenceAgent.NONE:
        return None
    if host.fence_agent is FenceAgent.MANUAL:
        return ManualFencer(host.name, host.fence_options)
    if host.fence_agent is FenceAgent.LAB:
        from flexvm.fencing.lab import LabFencer

        return LabFencer(host.name, host.fence_options)
    from flexvm.fencing.ipmi import IpmiFencer

    return IpmiFencer(host.name, host.fence_options)
