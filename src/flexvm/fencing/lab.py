"""The lab's fence agent: a lab host's power switch is flexvm's own (``Lab.power_off`` kills
every process in its namespace), and its second opinion is the lab switch's view of it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flexvm.errors import FenceFailed, FlexvmError
from flexvm.fencing.agents import Fencer, Opinion
from flexvm.model.host import FenceAgent

if TYPE_CHECKING:
    from flexvm.lab.lab import Lab


class LabFencer(Fencer):
    kind = FenceAgent.LAB

    def _lab(self) -> Lab:
        from flexvm.lab.lab import Lab  # the lab stands beside the stack: only this agent knows it

        return Lab(Path(self.options["root"]))

    @property
    def lab_host(self) -> str:
        return self.options["host"]

    def second_opinion(self) -> Opinion:
        lab = self._lab()
        try:
            if not lab.switch_port_up(self.lab_host):
                return Opinion(True, f"the lab switch's port to {self.lab_host} is down")
            if not lab.libvirtd_running(self.lab_host):
                return Opinion(True, f"no libvirtd runs on {self.lab_host}")
        except FlexvmError as err:
            return Opinion(False, f"the lab could not be asked: {err.message}")
        return Opinion(False, f"the lab switch sees {self.lab_host}'s port up and its libvirtd running")

    def power_off(self) -> str:
        try:
            killed = self._lab().power_off(self.lab_host)
        except FlexvmError as err:
            raise FenceFailed(f"the lab could not power {self.lab_host} off: {err.message}") from err
        return f"powered {self.lab_host} off: {len(killed)} processes killed"

    def confirm_off(self) -> str:
        try:
            running = self._lab().processes_of(self.lab_host)
        except FlexvmError as err:
            raise FenceFailed(f"the lab could not confirm {self.lab_host} is off: {err.message}") from err
        if running:
            raise FenceFailed(f"{self.lab_host} still runs PIDs {', '.join(map(str, running))}")
        return f"no process runs in {self.lab_host}'s namespace"
