"""The counters contract: ``Driver.read_counters`` reads the host and every running guest at once.

Every test runs once per driver. On libvirt the guests of ``qemu:///system`` have only QEMU's
user-mode NIC, which nothing outside can reach; the tests that load a guest (``/burn`` for CPU,
requests for the network, ``/note`` for the disk) use a guest of the lab instead
(``lab_fixtures.migration_lab``, host 1, bridged onto the lab switch), read through that lab
host's libvirt driver. The fake is loaded by setting its guest's ``cpu_load``/``net_rate``/
``disk_rate``. Run with ``-s`` to see the figures (rates, the cost of one reading).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from flexvm.drivers.base import Driver
from flexvm.drivers.fake import FakeDriver, FakeGuest
from flexvm.model.metrics import GuestCounters, HostReading
from tests.contract.conftest import Guest, GuestFactory, driver_kind, wait_for
from tests.contract.lab_fixtures import (
    LabGuest,
    MigrationLab,
    migration_lab_fixture,  # noqa: F401 - the migration_lab fixture
)

GIB_NS = 1_000_000_000  # one CPU-second
WINDOW = 5.0  # seconds a rate is measured over (vCPU time moves in 10 ms steps on libvirt)
BURN_SECONDS = 20  # long enough for the burn to be seen starting, then measured for WINDOW
BUSY_DEADLINE = 10.0  # from the /burn request to the vCPU seen busy
REST_MAX = 0.25  # CPU-seconds per second an idle tiny guest may use (under TCG: timer ticks)
HTTP_PATIENCE = BURN_SECONDS + 40.0
FIGURES: dict[str, str] = {}


def figure(name: str, value: str) -> None:
    FIGURES[name] = value
    print(f"\n[counters figure] {name}: {value}")


def counters_of(reading: HostReading, name: str) -> GuestCounters | None:
    found = [g for g in reading.guests if g.name == name]
    assert len(found) <= 1, f"{name} is in the reading {len(found)} times"
    return found[0] if found else None


def guest_counters(driver: Driver, name: str) -> GuestCounters:
    counters = counters_of(driver.read_counters(), name)
    assert counters is not None, f"{name} is not in the reading"
    return counters


@dataclass(frozen=True)
class Rates:
    """Growth per second of wall time between two readings of one guest."""

    seconds: float
    cpu: float
    vcpu: float | None
    vcpu_wait: float | None

    @classmethod
    def between(cls, a: GuestCounters, b: GuestCounters) -> Rates:
        assert a.boot_id == b.boot_id, "the guest restarted between the readings"
        seconds = b.at - a.at
        assert seconds > 0
        assert a.cpu_time_ns is not None and b.cpu_time_ns is not None

        def per_second(x: int | None, y: int | None) -> float | None:
            return None if x is None or y is None else (y - x) / seconds

        cpu = per_second(a.cpu_time_ns, b.cpu_time_ns)
        assert cpu is not None
        return cls(seconds, cpu, per_second(a.vcpu_time_ns, b.vcpu_time_ns), per_second(a.vcpu_wait_ns, b.vcpu_wait_ns))

    def text(self) -> str:
        def cpus(x: float | None) -> str:
            return "-" if x is None else f"{x / GIB_NS:.3f}"

        return (
            f"cpu {cpus(self.cpu)}, vcpu {cpus(self.vcpu)}, vcpu wait {cpus(self.vcpu_wait)} CPU-s/s"
            f" over {self.seconds:.1f} s"
        )


def measure(driver: Driver, name: str, window: float = WINDOW) -> Rates:
    first = guest_counters(driver, name)
    time.sleep(window)  # the measurement window itself
    return Rates.between(first, guest_counters(driver, name))


# --------------------------------------------------------------------------- a guest that can be loaded


class Loadable:
    """A running guest that a test can make busy, and the driver that reads its counters."""

    kind: str
    driver: Driver
    name: str

    @contextmanager
    def burning(self, seconds: int) -> Iterator[None]:
        raise NotImplementedError

    def send_requests(self, count: int) -> None:
        raise NotImplementedError

    def write_disk(self) -> None:
        raise NotImplementedError


class FakeLoadable(Loadable):
    def __init__(self, driver: FakeDriver, guest: Guest) -> None:
        self.kind = "fake"
        self.driver = self.fake = driver
        self.name = guest.name

    @property
    def guest(self) -> FakeGuest:
        return self.fake.host.guests[self.name]

    @contextmanager
    def burning(self, seconds: int) -> Iterator[None]:
        before = self.guest.cpu_load
        self.guest.cpu_load = 1.0
        try:
            yield
        finally:
            self.guest.cpu_load = before

    def send_requests(self, count: int) -> None:
        self.guest.net_rate = max(self.guest.net_rate, 1500.0 * count)

    def write_disk(self) -> None:
        self.guest.disk_rate = max(self.guest.disk_rate, 64 * 1024.0)


class LabLoadable(Loadable):
    def __init__(self, lab: MigrationLab, guest: LabGuest) -> None:
        self.kind = "libvirt"
        self.lab = lab
        self.guest = guest
        self.driver = lab.drivers[0]
        self.name = guest.name

    @contextmanager
    def burning(self, seconds: int) -> Iterator[None]:
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                with httpx.Client(timeout=HTTP_PATIENCE, trust_env=False) as client:
                    url = self.lab.url(self.guest, f"/burn?seconds={seconds}")
                    outcome["response"] = client.get(url, headers={"Connection": "close"})
            except Exception as err:  # noqa: BLE001 - reported below
                outcome["error"] = err

        thread = threading.Thread(target=run, name="burner", daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join(HTTP_PATIENCE)
        assert not thread.is_alive(), "/burn did not answer in time"
        assert "error" not in outcome, f"/burn failed: {outcome['error']!r}"
        response = outcome["response"]
        assert isinstance(response, httpx.Response) and response.status_code == 200, response

    def send_requests(self, count: int) -> None:
        for _ in range(count):
            assert self.lab.get(self.guest, "/").status_code == 200

    def write_disk(self) -> None:
        assert self.lab.get(self.guest, "/note?text=counters").status_code == 200


@pytest.fixture(scope="module")
def lab_guest(migration_lab: MigrationLab) -> LabGuest:
    return migration_lab.boot("counters")


@pytest.fixture(scope="module")
def loadable(driver: Driver, module_guests: GuestFactory, request: pytest.FixtureRequest) -> Loadable:
    if isinstance(driver, FakeDriver):
        return FakeLoadable(driver, module_guests.booted("load"))
    return LabLoadable(request.getfixturevalue("migration_lab"), request.getfixturevalue("lab_guest"))


# --------------------------------------------------------------------------- the reading


def test_a_running_guest_is_read_with_its_vcpus_and_memory(driver: Driver, running_guest: Guest) -> None:
    counters = guest_counters(driver, running_guest.name)
    spec = running_guest.spec
    assert counters.running is True
    assert counters.vm_id == spec.vm_id
    assert counters.vcpus == spec.vcpus
    assert counters.memory_kib == spec.memory_mib * 1024
    assert counters.cpu_time_ns is not None and counters.cpu_time_ns > 0
    assert counters.vcpu_time_ns is not None and 0 < counters.vcpu_time_ns <= counters.cpu_time_ns
    assert counters.vcpu_wait_ns is not None and counters.vcpu_wait_ns >= 0
    assert counters.disk_read_bytes is not None and counters.disk_read_bytes >= 0
    assert counters.boot_id
    assert abs(counters.at - time.time()) < 60


def test_cpu_counters_only_grow_and_keep_their_boot_id(driver: Driver, running_guest: Guest) -> None:
    first = guest_counters(driver, running_guest.name)
    second = guest_counters(driver, running_guest.name)
    assert second.boot_id == first.boot_id
    assert second.at >= first.at
    for field in ("cpu_time_ns", "vcpu_time_ns", "vcpu_wait_ns", "disk_read_bytes", "disk_read_ops"):
        a, b = getattr(first, field), getattr(second, field)
        assert a is not None and b is not None and b >= a, f"{field}: {a} -> {b}"


def test_every_running_guest_is_in_one_reading_a_stopped_one_is_not_and_a_restart_is_seen(
    driver: Driver, guests: GuestFactory
) -> None:
    started = [guests.define(f"many{i}") for i in range(3)]
    for guest in started:
        driver.start(guest.name)
    reading = driver.read_counters()
    for guest in started:
        counters = counters_of(reading, guest.name)
        assert counters is not None, f"{guest.name} is running but not in the reading"
        assert counters.running and counters.vm_id == guest.spec.vm_id and counters.vcpus == 1

    # What one reading costs this process, with these guests (and whatever else runs) on the host.
    calls = 20
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        driver.read_counters()
    cpu, wall = (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls
    figure(
        f"{driver_kind(driver)}: one read_counters with {len(reading.guests)} guests running",
        f"{cpu * 1000:.2f} ms CPU, {wall * 1000:.2f} ms wall",
    )

    stopped = started[0]
    driver.destroy(stopped.name)
    after = driver.read_counters()
    counters = counters_of(after, stopped.name)
    assert counters is None or counters.running is False, f"{stopped.name} was stopped but reads as running"
    assert all(counters_of(after, g.name) is not None for g in started[1:])

    # Started again, its counters start again: the boot id says so.
    driver.start(stopped.name)
    again = counters_of(driver.read_counters(), stopped.name)
    first = counters_of(reading, stopped.name)
    assert again is not None and first is not None and again.running
    assert again.boot_id != first.boot_id


def test_host_counters_are_sane(driver: Driver) -> None:
    first = driver.read_counters().host
    second = driver.read_counters().host
    for host in (first, second):
        assert host.cpus == driver.host_info().cpus
        assert host.cpu_total_ns is not None and host.cpu_busy_ns is not None
        assert host.cpu_total_ns > host.cpu_busy_ns >= 0
        assert host.memory_total_kib is not None and host.memory_total_kib > 0
        assert host.memory_free_kib is not None and 0 <= host.memory_free_kib <= host.memory_total_kib
    assert second.at >= first.at
    assert second.cpu_total_ns >= first.cpu_total_ns  # type: ignore[operator]


# --------------------------------------------------------------------------- a loaded guest


def test_cpu_time_grows_little_at_rest(loadable: Loadable) -> None:
    rates = measure(loadable.driver, loadable.name)
    figure(f"{loadable.kind}: idle guest", rates.text())
    assert 0 <= rates.cpu < REST_MAX * GIB_NS, rates.text()


def test_cpu_time_grows_by_about_a_cpu_second_per_second_while_the_guest_burns(loadable: Loadable) -> None:
    driver, name = loadable.driver, loadable.name
    with loadable.burning(BURN_SECONDS):
        burn_started = time.monotonic()
        last = [guest_counters(driver, name)]

        def busy() -> bool:
            now = guest_counters(driver, name)
            rates = Rates.between(last[0], now)
            last[0] = now
            return rates.cpu > 0.5 * GIB_NS

        wait_for(f"{name}'s CPU time to grow as /burn runs", busy, BUSY_DEADLINE, interval=0.5)
        rates = measure(driver, name)
        assert time.monotonic() - burn_started < BURN_SECONDS, "the window outlasted the burn; raise BURN_SECONDS"
    figure(f"{loadable.kind}: guest burning one vCPU", rates.text())
    # The vCPU either ran or waited in the host's run queue for the whole window (the host has 2
    # CPUs and other guests: it may not get a whole one); cpu.time adds QEMU's other threads.
    assert rates.vcpu is not None and rates.vcpu_wait is not None
    assert 0.85 * GIB_NS < rates.vcpu + rates.vcpu_wait < 1.15 * GIB_NS, rates.text()
    assert 0.5 * GIB_NS < rates.cpu < 1.5 * GIB_NS, rates.text()
    assert rates.vcpu <= rates.cpu * 1.02, rates.text()  # 10 ms steps of vcpu.N.time against cpu.time


def test_network_and_disk_counters_count_what_the_guest_does(loadable: Loadable) -> None:
    driver, name = loadable.driver, loadable.name
    before = guest_counters(driver, name)
    requests = 20
    loadable.send_requests(requests)
    loadable.write_disk()

    def grown() -> GuestCounters | None:
        now = guest_counters(driver, name)
        ready = (
            now.net_rx_packets is not None
            and now.net_rx_packets >= (before.net_rx_packets or 0) + requests
            and now.disk_write_ops is not None
            and now.disk_write_ops > (before.disk_write_ops or 0)
        )
        return now if ready else None

    after = wait_for(f"{name}'s network and disk counters to grow", grown, 10.0, interval=0.5)
    for field in ("net_rx_bytes", "net_tx_bytes", "net_rx_packets", "net_tx_packets", "disk_write_bytes"):
        a, b = getattr(before, field), getattr(after, field)
        assert a is not None and b is not None and b > a, f"{field}: {a} -> {b}"
