"""Boot the built-in tiny image under plain QEMU (TCG) and check what its guest init promises.

Guests get a user-mode NIC with ``restrict=on`` (they can reach nothing outside) and a host
port forwarded on 127.0.0.1, the only address these tests send traffic to.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import pytest

from flexvm.images.tiny import TinyImage, build_tiny_image, find_debian_kernel

pytestmark = pytest.mark.integration

T = TypeVar("T")

QEMU = "qemu-system-x86_64"
BOOT_DEADLINE = 60.0  # generous: TCG on a busy 2-core machine; typical boots take 3-5 s
# Searched, not anchored: the serial log has \r\n line ends and firmware escape codes.
LINE = re.compile(r"flexvm: (?P<kind>[a-z]+)(?P<rest>[^\r\n]*)")
MIB = 1024 * 1024


def fields(rest: str) -> dict[str, str]:
    """' name=a cpus=2' -> {'name': 'a', 'cpus': '2'}"""
    return dict(item.split("=", 1) for item in rest.split() if "=" in item)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something other than None; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Guest:
    """One QEMU process with its serial console in a file and a QMP socket."""

    def __init__(
        self,
        image: TinyImage,
        workdir: Path,
        *,
        disk: Path | None,
        nic: bool,
        smp: str = "2",
        memory: str = "384",
        cmdline: str = "",
    ) -> None:
        self.workdir = workdir
        self.serial = workdir / "serial.log"
        self.qmp_path = workdir / "qmp.sock"
        self.port = free_port() if nic else None
        self._qmp: socket.socket | None = None
        self._qmp_file: TextIO | None = None
        for stale in (self.serial, self.qmp_path):
            stale.unlink(missing_ok=True)
        self.argv = [
            QEMU,
            "-accel",
            "tcg",
            "-nographic",
            "-no-user-config",
            "-nodefaults",
            "-serial",
            f"file:{self.serial}",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-smp",
            smp,
            "-m",
            memory,
            "-kernel",
            str(image.kernel),
            "-initrd",
            str(image.initrd),
            "-append",
            f"{image.cmdline} {cmdline}".strip(),
        ]
        if disk is not None:
            self.argv += ["-drive", f"file={disk},if=virtio,format=qcow2,node-name=disk0"]
        if nic:
            self.argv += [
                "-netdev",
                f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:80",
                "-device",
                "virtio-net-pci,netdev=n0",
            ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        with open(self.workdir / "qemu.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self, kind: str) -> list[dict[str, str]]:
        return [fields(m["rest"]) for m in LINE.finditer(self.console()) if m["kind"] == kind]

    def wait_line(
        self,
        kind: str,
        timeout: float,
        *,
        nth: int = 1,
        match: Callable[[dict[str, str]], bool] = lambda f: True,
    ) -> dict[str, str]:
        def found() -> dict[str, str] | None:
            assert self.proc is not None
            hits = [f for f in self.lines(kind) if match(f)]
            if len(hits) >= nth:
                return hits[nth - 1]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"QEMU exited ({self.proc.returncode}) before 'flexvm: {kind}':\n" + self.console()[-2000:]
                )
            return None

        return wait_until(f"'flexvm: {kind}' on the console", found, timeout)

    def qmp(self, command: str, **arguments: object) -> Any:
        if self._qmp is None:
            wait_until("the QMP socket", lambda: True if self.qmp_path.exists() else None, 10)
            self._qmp = socket.socket(socket.AF_UNIX)
            self._qmp.settimeout(30)
            self._qmp.connect(str(self.qmp_path))
            self._qmp_file = self._qmp.makefile("rw")
            self._qmp_file.readline()  # the greeting
            self.qmp("qmp_capabilities")
        assert self._qmp_file is not None
        self._qmp_file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self._qmp_file.flush()
        while True:
            reply = json.loads(self._qmp_file.readline())
            if "error" in reply:
                raise AssertionError(f"QMP {command}: {reply['error']}")
            if "return" in reply:
                return reply["return"]
            # anything else is an asynchronous event; skip it

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def get(self, path: str, timeout: float = 30, *, retry: bool = True) -> tuple[int, str]:
        """GET from the guest through the forwarded port on 127.0.0.1 (no proxy, no redirects).
        With ``retry``, a refused or dropped connection is tried again for a few seconds."""
        assert self.port is not None

        def attempt() -> tuple[int, str] | None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                return resp.status, resp.read().decode()
            except (ConnectionError, http.client.RemoteDisconnected):
                if not retry:
                    raise
                return None  # the guest's listener may be a moment behind the ready line
            finally:
                conn.close()

        return wait_until(f"an answer to GET {path}", attempt, 10, interval=0.2)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> TinyImage:
    # `make test` installs both; their absence is a broken setup, not a reason to skip.
    assert shutil.which(QEMU) is not None, f"{QEMU} not installed (apt-get install qemu-system-x86)"
    find_debian_kernel()
    started = time.monotonic()
    image = build_tiny_image(tmp_path_factory.mktemp("tiny-image"))
    print(f"tiny image built in {time.monotonic() - started:.1f} s")
    return image


def make_overlay(image: TinyImage, path: Path) -> Path:
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(image.disk),
            str(path),
        ],
        check=True,
    )
    return path


def virtual_size(path: Path) -> int:
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(json.loads(info)["virtual-size"])


@pytest.fixture
def boot(tiny_image: TinyImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Guest]]:
    """Start guests; every one is killed by PID at teardown, also when the test failed."""
    guests: list[Guest] = []

    def start(**kwargs: Any) -> Guest:
        guest = Guest(tiny_image, tmp_path_factory.mktemp("guest"), **kwargs)
        guests.append(guest)
        guest.start()
        return guest

    yield start
    for guest in guests:
        guest.kill()


@pytest.fixture(scope="module")
def web_guest(
    tiny_image: TinyImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Guest, dict[str, str], Path]]:
    """One guest with disk and NIC, shared by the HTTP tests: (guest, ready fields, overlay)."""
    workdir = tmp_path_factory.mktemp("web-guest")
    overlay = make_overlay(tiny_image, workdir / "os.qcow2")
    guest = Guest(tiny_image, workdir, disk=overlay, nic=True, cmdline="flexvm.name=probe-1")
    try:
        guest.start()
        ready = guest.wait_line("ready", BOOT_DEADLINE)
        ready["_host_seconds"] = f"{time.monotonic() - guest.started:.2f}"
        yield guest, ready, overlay
    finally:
        guest.kill()


# --------------------------------------------------------------------------- tests


def test_ready_line_with_disk_and_nic(
    web_guest: tuple[Guest, dict[str, str], Path], record_property: Callable[[str, object], None]
) -> None:
    guest, ready, overlay = web_guest
    record_property("boot_to_ready_s", ready["_host_seconds"])
    print(
        f"boot to ready (disk + NIC, 2 vCPU, 384 MiB): {ready['_host_seconds']} s on the host, "
        f"guest uptime {ready['uptime']} s"
    )
    assert ready["name"] == "probe-1"
    assert ready["cpus"] == "2"
    assert 300 * 1024 < int(ready["mem_kib"]) <= 384 * 1024
    assert int(ready["disk_bytes"]) == virtual_size(overlay)
    assert ready["ip"] == "10.0.2.15"
    assert ready["boots"] == "1"
    assert float(ready["uptime"]) > 0
    assert len(guest.lines("ready")) == 1


def test_http_root_answers_the_name(web_guest: tuple[Guest, dict[str, str], Path]) -> None:
    guest, _, _ = web_guest
    assert guest.get("/") == (200, "probe-1\n")


def test_http_info(web_guest: tuple[Guest, dict[str, str], Path]) -> None:
    guest, ready, overlay = web_guest
    status, body = guest.get("/info")
    assert status == 200
    info = dict(line.split("=", 1) for line in body.splitlines())
    assert info["name"] == "probe-1"
    assert info["cpus"] == "2"
    assert info["mem_kib"] == ready["mem_kib"]
    assert int(info["disk_bytes"]) == virtual_size(overlay)
    assert info["boots"] == "1"
    assert float(info["uptime"]) >= float(ready["uptime"])


def test_http_burn_takes_the_time_and_others_are_still_served(
    web_guest: tuple[Guest, dict[str, str], Path],
) -> None:
    guest, _, _ = web_guest
    assert guest.port is not None
    sent = threading.Event()
    answer: list[tuple[int, str]] = []
    times: dict[str, float] = {}

    def burn() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", guest.port, timeout=60)
        try:
            times["started"] = time.monotonic()
            conn.request("GET", "/burn?seconds=3")
            sent.set()
            resp = conn.getresponse()
            answer.append((resp.status, resp.read().decode()))
            times["done"] = time.monotonic()
        finally:
            sent.set()
            conn.close()

    burner = threading.Thread(target=burn)
    burner.start()
    try:
        assert sent.wait(timeout=30)
        assert guest.get("/") == (200, "probe-1\n")
        root_done = time.monotonic()
    finally:
        burner.join(timeout=60)
    assert answer == [(200, "burned 3 s\n")]
    assert times["done"] - times["started"] >= 3.0
    assert root_done < times["done"], "GET / waited for the burn: requests are served one at a time"


def test_http_serves_a_burst_of_clients(web_guest: tuple[Guest, dict[str, str], Path]) -> None:
    guest, _, _ = web_guest
    answers: list[object] = []

    def client() -> None:
        for _ in range(5):
            try:
                answers.append(guest.get("/", retry=False))
            except OSError as err:  # a dropped connection: record it, the assert shows it
                answers.append(repr(err))

    clients = [threading.Thread(target=client) for _ in range(20)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    assert answers == [(200, "probe-1\n")] * 100


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/burn?seconds=abc", 400),
        ("/burn?seconds=-1", 400),
        ("/burn", 400),
        ("/nowhere", 404),
    ],
)
def test_http_rejects_bad_requests(web_guest: tuple[Guest, dict[str, str], Path], path: str, status: int) -> None:
    guest, _, _ = web_guest
    assert guest.get(path)[0] == status


def test_powerdown_then_second_boot_counts_two(
    boot: Callable[..., Guest], tiny_image: TinyImage, tmp_path: Path
) -> None:
    overlay = make_overlay(tiny_image, tmp_path / "os.qcow2")
    first = boot(disk=overlay, nic=True)
    assert first.wait_line("ready", BOOT_DEADLINE)["boots"] == "1"
    first.qmp("system_powerdown")
    first.wait_line("poweroff", 30)
    assert first.wait_exit(timeout=30) == 0  # QEMU left by itself: the guest powered off

    second = boot(disk=overlay, nic=True)
    ready = second.wait_line("ready", BOOT_DEADLINE)
    assert ready["boots"] == "2"
    assert second.get("/info")[1].splitlines()[-2:] == ["boots=2", "ip=10.0.2.15"]


def test_initramfs_only_boot(boot: Callable[..., Guest], record_property: Callable[[str, object], None]) -> None:
    guest = boot(disk=None, nic=False, smp="1", memory="256", cmdline="flexvm.tick=1")
    ready = guest.wait_line("ready", BOOT_DEADLINE)
    seconds = time.monotonic() - guest.started
    record_property("boot_to_ready_s", f"{seconds:.2f}")
    print(
        f"boot to ready (initramfs only, 1 vCPU, 256 MiB): {seconds:.2f} s on the host, "
        f"guest uptime {ready['uptime']} s"
    )
    assert ready["name"] == "tiny"
    assert ready["disk_bytes"] == "0"
    assert ready["ip"] == "none"
    assert ready["boots"] == "1"
    assert ready["cpus"] == "1"
    tick = guest.wait_line("tick", 10, nth=2)
    assert float(tick["uptime"]) > float(ready["uptime"])
    guest.qmp("system_powerdown")
    guest.wait_line("poweroff", 30)
    assert guest.wait_exit(timeout=30) == 0


def test_hotplug_and_disk_grow_show_on_console(
    boot: Callable[..., Guest], tiny_image: TinyImage, tmp_path: Path
) -> None:
    overlay = make_overlay(tiny_image, tmp_path / "os.qcow2")
    guest = boot(disk=overlay, nic=False, smp="1,maxcpus=2", memory="256,slots=2,maxmem=1G")
    ready = guest.wait_line("ready", BOOT_DEADLINE)
    assert ready["cpus"] == "1"

    grown = virtual_size(overlay) + 16 * MIB
    guest.qmp("block_resize", **{"node-name": "disk0", "size": grown})
    guest.wait_line("state", 10, match=lambda f: f["disk_bytes"] == str(grown))

    slots = guest.qmp("query-hotpluggable-cpus")
    free = next(s for s in slots if "qom-path" not in s)  # an empty CPU slot
    guest.qmp("device_add", driver=free["type"], id="cpu1", **free["props"])
    guest.wait_line("state", 10, match=lambda f: f["cpus"] == "2")

    guest.qmp("object-add", **{"qom-type": "memory-backend-ram", "id": "mem1", "size": 128 * MIB})
    guest.qmp("device_add", driver="pc-dimm", id="dimm1", memdev="mem1")
    before = int(ready["mem_kib"])
    guest.wait_line("state", 10, match=lambda f: int(f["mem_kib"]) >= before + 120 * 1024)
