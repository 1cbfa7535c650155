"""A scale set of real tiny guests on the lab behind a real HAProxy on 127.0.0.1.

One story, in order, because each step needs the one before (and the lab is one per machine):
both instances answer through the load balancer; a bounded load of /burn requests drives CPU up
and autoscale adds an instance that then receives requests; the load stops and the set shrinks
back with no failed request; HAProxy killed mid-test is started again; and a server killed while
scaling out leaves, after its restart, the set at its intended count with no orphan guests.

Traffic goes only to 127.0.0.1 (the load balancer) and the lab's guest addresses (its probes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import libvirt
import pytest

from flexvm.lab import Lab
from tests.helpers import FlexvmServer, free_port, wait_for

SET = "web"
LOAD_SECONDS_MAX = 150  # the load stops by itself by then, whatever happens
BURN_SECONDS = 3


@dataclass
class Pool:
    server: FlexvmServer
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """Two lab hosts (2 CPUs, 3 GiB each); a server that samples every 2 s and scales every 1 s."""
    server = FlexvmServer(
        tmp_path_factory.mktemp("scaleset-lab"),
        {
            "FLEXVM_LIBVIRT_URI": "",
            "FLEXVM_HEALTH_SECONDS": "2",
            "FLEXVM_HEALTH_TIMEOUT": "5",
            "FLEXVM_READY_TIMEOUT": "120",
            "FLEXVM_METRICS_INTERVAL": "2",
            "FLEXVM_SCALING_SECONDS": "1",
        },
    )
    server.start()
    try:
        server.ok("lab", "up", "--hosts", "2", "--host-cpus", "2", "--host-memory", "3G")
        server.ok("image", "build", "tiny")
        yield Pool(server, free_port())
    finally:
        delete_set(server)
        server.cli("lab", "down", "--force")
        Lab(server.home / "lab").down()
        server.stop()
        pid_file = server.home / "lb" / "haproxy.pid"
        if pid_file.exists():  # the last delete should have stopped it; never leave one behind
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


def delete_set(server: FlexvmServer) -> None:
    """Autoscale off, let a running converge finish, then delete the set (its load balancer goes too)."""
    server.cli("autoscale", "off", SET)
    with contextlib.suppress(AssertionError, httpx.HTTPError), server.api() as api:
        wait_for(lambda: not api.get(f"/scalesets/{SET}").json().get("active_operation_id"), 300, "the set to settle")
    server.cli("scaleset", "delete", SET, timeout=300)


def answer(url: str, path: str = "/", timeout: float = 10.0) -> str | None:
    """The body of one GET through the load balancer, or None when it failed."""
    try:
        response = httpx.get(url + path, timeout=timeout, trust_env=False)
    except httpx.HTTPError:
        return None
    return response.text.strip() if response.status_code == 200 else None


def hostnames(url: str, requests: int = 12) -> Counter[str]:
    return Counter(answer(url) or "FAILED" for _ in range(requests))


def instances(server: FlexvmServer) -> list[dict]:
    with server.api() as api:
        return list(api.get(f"/scalesets/{SET}/instances").json())


def serving(server: FlexvmServer) -> list[str]:
    return sorted(i["name"] for i in instances(server) if i["state"] == "serving")


def history(server: FlexvmServer) -> list[dict]:
    with server.api() as api:
        return list(api.get(f"/scalesets/{SET}/autoscale/history").json())


@dataclass
class Load:
    """Bounded load through the load balancer: ``workers`` threads, each looping on a path until
    stopped, ``max_seconds`` pass, or ``max_requests`` were sent. Counts answers and failures."""

    url: str
    path: str
    workers: int
    max_seconds: float
    max_requests: int = 2000
    pause: float = 0.0
    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.workers):
            thread = threading.Thread(target=self._work, args=(deadline,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _work(self, deadline: float) -> None:
        # A new connection per request, as curl in a loop would: a keep-alive client can send on a
        # connection the old HAProxy worker is closing at a reload, and must retry it (browsers do).
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._sent >= self.max_requests:
                    return
                self._sent += 1
            try:
                response = httpx.get(self.url + self.path, timeout=30, trust_env=False)
                if response.status_code == 200:
                    with self._lock:
                        self.answers[response.text.strip()] += 1
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:80]}")
            except httpx.HTTPError as err:
                self.failures.append(f"{type(err).__name__}: {err}")
            if self.pause:
                time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)


def test_two_instances_answer_through_haproxy_on_loopback(pool: Pool) -> None:
    s = pool.server
    s.ok("scaleset", "create", SET, "--size", "Standard_B1ls", "--image", "tiny", "--instances", "2",
         "--lb-port", f"{pool.port}:80", "--fault-domains", "2", timeout=400)  # fmt: skip
    assert serving(s) == [f"{SET}-0", f"{SET}-1"]
    assert {i["lb_status"] for i in instances(s)} == {"UP"}, "in rotation once create returns"
    seen = hostnames(pool.url)
    assert set(seen) == {f"{SET}-0", f"{SET}-1"}, seen  # round robin: both, and no failure
    hosts = {i["host"] for i in instances(s)}
    assert hosts == {"lab1", "lab2"}, "two fault domains: one instance on each host"


def test_load_grows_the_set_and_the_new_instance_serves_then_it_shrinks_without_failures(pool: Pool) -> None:
    s = pool.server
    s.ok("autoscale", "set", SET, "--min", "2", "--max", "3", "--default", "2")
    s.ok("autoscale", "rule", "add", SET, "--metric", "cpu_percent", "--statistic", "avg", "--grain", "2s",
         "--window", "8s", "--operator", "gt", "--threshold", "60", "--action", "increase", "--count", "1",
         "--cooldown", "20s")  # fmt: skip
    # In below 30: the light traffic of the scale-in phase alone costs three tiny guests ~15 % each
    # under TCG, so a threshold near that would leave the set waiting on noise.
    s.ok("autoscale", "rule", "add", SET, "--metric", "cpu_percent", "--statistic", "avg", "--grain", "2s",
         "--window", "16s", "--operator", "lt", "--threshold", "30", "--action", "decrease", "--count", "1",
         "--cooldown", "10s")  # fmt: skip

    started = time.time()
    burn = Load(pool.url, f"/burn?seconds={BURN_SECONDS}", workers=2, max_seconds=LOAD_SECONDS_MAX).start()
    try:
        grew = wait_for(
            lambda: next((e for e in history(s) if e["action"] == "increase"), None), 120, "autoscale to scale out"
        )
        decided = grew["at"] - started
        wait_for(lambda: f"{SET}-2" in serving(s), 240, "the third instance to serve")
        new_serving = time.time() - started
        # The new instance gets requests through the load balancer (plain GETs between the burns).
        wait_for(lambda: f"{SET}-2" in hostnames(pool.url, 6), 30, "a request answered by web-2")
    finally:
        burn.stop()
    assert not burn.failures, burn.failures[:5]
    print(f"\nload start -> scale-out decision {decided:.1f} s; -> new instance serving {new_serving:.1f} s")

    # Load stops: CPU falls, the set shrinks to its minimum, and light traffic meanwhile never fails.
    light = Load(pool.url, "/", workers=2, max_seconds=180, max_requests=20000, pause=0.05).start()
    try:
        wait_for(lambda: len(serving(s)) == 2 and len(instances(s)) == 2, 170, "the set to shrink back to 2")
        time.sleep(2)  # requests that were in flight during the last reload finish
    finally:
        light.stop()
    assert sum(light.answers.values()) > 100
    assert light.failures == [], f"{len(light.failures)} failed requests during scale-in: {light.failures[:5]}"
    print(f"scale-in: {sum(light.answers.values())} requests, 0 failed")
    actions = [e["action"] for e in history(s)]
    assert "decrease" in actions


def haproxy_pid(server: FlexvmServer) -> int:
    return int((server.home / "lb" / "haproxy.pid").read_text().split()[0])


def test_haproxy_killed_is_started_again_with_the_same_backends(pool: Pool) -> None:
    s = pool.server
    old = haproxy_pid(s)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: answer(pool.url) is None, 10, "the load balancer to be gone")
    wait_for(lambda: answer(pool.url) is not None, 30, "flexvm to start the load balancer again")
    assert haproxy_pid(s) != old
    assert set(hostnames(pool.url)) == set(serving(s))


def lab_guests(server: FlexvmServer) -> set[str]:
    names = set()
    with server.api() as api:
        for host in api.get("/hosts").json():
            conn = libvirt.open(host["uri"])
            try:
                names |= {d.name() for d in conn.listAllDomains()}
            finally:
                conn.close()
    return names


def test_a_server_killed_during_scale_out_ends_at_the_intended_count_with_no_orphans(pool: Pool) -> None:
    s = pool.server
    s.ok("autoscale", "off", SET)
    s.ok("scaleset", "scale", SET, "--instances", "3", "--no-wait")
    wait_for(lambda: any(i["state"] == "joining" for i in instances(s)), 30, "a new instance to be on its way")
    time.sleep(2)  # its VM is being created now
    s.kill()
    s.start()
    wait_for(
        lambda: (
            len(instances(s)) == 3 and all(i["state"] == "serving" and i["lb_status"] == "UP" for i in instances(s))
        ),
        300,
        "the set to end at 3 instances, all in rotation",
    )
    names = {i["name"] for i in instances(s)}
    assert lab_guests(s) == names, "every guest on the lab hosts is one of the set's instances"
    assert set(hostnames(pool.url, 12)) == names


def test_a_rolling_update_moves_every_instance_to_the_new_model_without_failing_a_request(pool: Pool) -> None:
    s = pool.server
    before = {i["name"] for i in instances(s)}
    light = Load(pool.url, "/", workers=2, max_seconds=400, max_requests=40000, pause=0.05).start()
    try:
        s.ok("scaleset", "update", SET, "--size", "Standard_B1s", "--max-unavailable", "1", timeout=400)
    finally:
        light.stop()
    after = instances(s)
    assert len(after) == 3 and not before & {i["name"] for i in after}, "every instance was replaced"
    assert all(i["current_model"] and i["state"] == "serving" for i in after)
    with s.api() as api:
        assert {api.get(f"/vms/{i['name']}").json()["size"] for i in after} == {"Standard_B1s"}
    assert sum(light.answers.values()) > 100
    failed = light.failures
    assert failed == [], f"{len(failed)} failed requests during the rolling update: {failed[:5]}"
