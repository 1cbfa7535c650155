"""IPMI fencing through Debian's ipmitool: the host's management controller (BMC) reports and
switches its power, on a network of its own.

Its second opinion: a BMC that answers while the host does not means the host itself has failed
(this server's network works); a BMC that does not answer either may mean this server is the one
cut off, so the host stays suspect. The password is read by ipmitool from a file on the server
(``-f``), never stored by flexvm or shown in a process list.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from flexvm import programs
from flexvm.errors import FenceFailed, InvalidInput
from flexvm.fencing.agents import Fencer, Opinion
from flexvm.model.host import FenceAgent

INTERFACES = ("lanplus", "lan")
CALL_TIMEOUT = 15.0  # one ipmitool call (it retries on its own within this)
CONFIRM_TIMEOUT = 30.0  # how long a powered-off host may take to report off
CONFIRM_POLL = 1.0


def check_ipmi_options(options: dict[str, str]) -> None:
    if options.get("interface", "lanplus") not in INTERFACES:
        raise InvalidInput("fence_options", f"interface must be one of {', '.join(INTERFACES)}")
    password_file = Path(options["password_file"])
    if not password_file.is_file():
        raise InvalidInput("fence_options", f"password_file {password_file} is not a file on the server")


class IpmiFencer(Fencer):
    kind = FenceAgent.IPMI

    def _ipmitool(self, *args: str) -> str:
        argv = programs.command(
            [
                "ipmitool",
                "-I",
                self.options.get("interface", "lanplus"),
                "-H",
                self.options["address"],
                "-U",
                self.options["user"],
                "-f",
                self.options["password_file"],
                *args,
            ]
        )
        where = f"the management controller of {self.host_name} ({self.options['address']})"
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=CALL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as err:
            raise FenceFailed(f"{where} did not answer within {CALL_TIMEOUT:.0f} s") from err
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise FenceFailed(f"{where}: ipmitool {' '.join(args)} failed: {said[-1] if said else done.returncode}")
        return done.stdout

    def power_status(self) -> str:
        """ "on" or "off", as the controller reports it."""
        out = self._ipmitool("chassis", "power", "status").strip().lower()
        if out.endswith(" on"):
            return "on"
        if out.endswith(" off"):
            return "off"
        raise FenceFailed(f"the management controller of {self.host_name} answered {out!r}, not its power state")

    def second_opinion(self) -> Opinion:
        try:
            power = self.power_status()
        except FenceFailed as err:
            return Opinion(False, f"{err.message}: the fault may be on this server's side")
        return Opinion(True, f"its management controller answers (power {power}); the host does not")

    def power_off(self) -> str:
        if self.power_status() == "off":
            return "it was already off"
        self._ipmitool("chassis", "power", "off")
        return "asked its management controller to power it off"

    def confirm_off(self) -> str:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while True:
            if self.power_status() == "off":
                return "its management controller reports power off"
            if time.monotonic() > deadline:
                raise FenceFailed(
                    f"the management controller of {self.host_name} still reports power on after "
                    f"{CONFIRM_TIMEOUT:.0f} s"
                )
            time.sleep(CONFIRM_POLL)
