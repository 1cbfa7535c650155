"""flexvm's own HAProxy, for real, on 127.0.0.1 only, in front of tiny Python HTTP servers."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from flexvm.scaling import haproxy as haproxy_module
from flexvm.scaling.haproxy import Backend, Frontend, HAProxy, LoadBalancerError, _pid_alive
from tests.helpers import free_port, wait_for

BINARY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(BINARY is None, reason="haproxy is not installed (scripts/setup.sh installs it)")


@dataclass
class App:
    """One instance: answers every GET with its name; /slow after 1.5 s; all 500 when unhealthy."""

    name: str
    healthy: bool = True
    served: list[str] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def backend(self) -> Backend:
        return Backend(self.name, "127.0.0.1", self.port)


def start_app(name: str) -> App:
    app = App(name)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path != "/healthz":
                app.served.append(self.path)
            if self.path == "/slow":
                time.sleep(1.5)
            body = app.name.encode()
            self.send_response(200 if app.healthy else 500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    app.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    app.server.daemon_threads = True
    threading.Thread(target=app.server.serve_forever, daemon=True).start()
    return app


@pytest.fixture
def apps() -> Iterator[Callable[[str], App]]:
    made: list[App] = []

    def make(name: str) -> App:
        made.append(start_app(name))
        return made[-1]

    yield make
    for app in made:
        assert app.server is not None
        app.server.shutdown()
        app.server.server_close()


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[HAProxy]:
    proxy = HAProxy(tmp_path / "lb", binary=BINARY or "haproxy")
    try:
        yield proxy
    finally:
        pid = proxy._master_pid()
        proxy.stop()
        assert pid is None or not _pid_alive(pid), f"haproxy {pid} outlived stop()"


@pytest.fixture
def port() -> int:
    return free_port()


def frontend(port: int, *apps: App) -> list[Frontend]:
    return [Frontend("web", "127.0.0.1", port, 80, tuple(a.backend() for a in apps), "/healthz")]


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One GET on a fresh connection through the load balancer (loopback only)."""
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout, trust_env=False)
    return response.status_code, response.text


def statuses(lb: HAProxy) -> dict[str, str]:
    return {s.server: s.status for s in lb.servers() if s.frontend == "web"}


def wait_up(lb: HAProxy, *names: str, timeout: float = 10.0) -> None:
    wait_for(lambda: all(statuses(lb).get(n) == "UP" for n in names), timeout, f"{names} UP", interval=0.1)


def test_requests_are_spread_over_both_backends(lb: HAProxy, apps: Callable[[str], App], port: int) -> None:
    a, b = apps("a"), apps("b")
    lb.apply(frontend(port, a, b))
    assert lb.running()
    wait_up(lb, "a", "b")
    answers = [get(port) for _ in range(10)]
    assert {status for status, _ in answers} == {200}
    assert sorted(body for _, body in answers) == ["a"] * 5 + ["b"] * 5  # round robin
    assert lb.frontends()["web"].requests_total >= 10
    assert sum(s.requests_total for s in lb.servers()) >= 10


def test_apply_is_idempotent(lb: HAProxy, apps: Callable[[str], App], port: int) -> None:
    a = apps("a")
    lb.apply(frontend(port, a))
    pid, worker = lb._master_pid(), lb._worker_pid()
    lb.apply(frontend(port, a))
    assert (lb._master_pid(), lb._worker_pid()) == (pid, worker)  # not even reloaded


def test_a_failing_backend_is_taken_out_and_requests_keep_succeeding(
    lb: HAProxy, apps: Callable[[str], App], port: int
) -> None:
    a, b = apps("a"), apps("b")
    lb.apply(frontend(port, a, b))
    wait_up(lb, "a", "b")
    b.healthy = False
    wait_for(lambda: statuses(lb)["b"].startswith("DOWN"), 5, "b DOWN", interval=0.1)
    assert [get(port) for _ in range(10)] == [(200, "a")] * 10


def test_a_new_backend_gets_no_request_before_its_probe_passes(
    lb: HAProxy, apps: Callable[[str], App], port: int
) -> None:
    a, sick = apps("a"), apps("sick")
    sick.healthy = False
    lb.apply(frontend(port, a))
    wait_up(lb, "a")
    lb.apply(frontend(port, a, sick))
    assert statuses(lb)["sick"].startswith("DOWN")  # at once, not after a first failed check
    answers = [get(port) for _ in range(20)]
    assert answers == [(200, "a")] * 20 and sick.served == []


def test_adding_and_removing_backends_reloads_without_a_failed_request(
    lb: HAProxy, apps: Callable[[str], App], port: int
) -> None:
    a, b, c = apps("a"), apps("b"), apps("c")
    lb.apply(frontend(port, a))
    wait_up(lb, "a")
    results: list[tuple[int, str] | str] = []

    def load(count: int = 300, spacing: float = 0.005, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        for _ in range(count):
            if time.monotonic() > end:
                break
            try:
                results.append(get(port))
            except httpx.HTTPError as err:
                results.append(f"{type(err).__name__}: {err}")
            time.sleep(spacing)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        for members in ((a, b), (a, b, c), (a, c), (a, b, c)):
            time.sleep(0.8)
            worker = lb._worker_pid()
            lb.apply(frontend(port, *members))
            assert lb._worker_pid() != worker  # a new worker answers when apply returns
    finally:
        loader.join(timeout=40)
    assert not loader.is_alive()
    failures = [r for r in results if not (isinstance(r, tuple) and r[0] == 200)]
    assert len(results) >= 250 and failures == []
    assert {r[1] for r in results if isinstance(r, tuple)} >= {"a", "b", "c"}


def test_drain_lets_the_request_in_flight_finish_and_sends_no_new_one(
    lb: HAProxy, apps: Callable[[str], App], port: int
) -> None:
    a, b = apps("a"), apps("b")
    lb.apply(frontend(port, a, b))
    wait_up(lb, "a", "b")
    slow: list[tuple[int, str]] = []
    request = threading.Thread(target=lambda: slow.append(get(port, "/slow")))
    request.start()
    busy = wait_for(
        lambda: next((s.server for s in lb.servers() if s.current_sessions > 0), None), 5, "the slow request"
    )
    other = ({"a", "b"} - {busy}).pop()
    drained: list[bool] = []
    drainer = threading.Thread(target=lambda: drained.append(lb.drain("web", busy, timeout=10)))
    drainer.start()
    wait_for(lambda: statuses(lb)[busy] == "DRAIN", 5, f"{busy} DRAIN", interval=0.05)
    answers = [get(port) for _ in range(6)]
    drainer.join(timeout=15)
    request.join(timeout=15)
    assert answers == [(200, other)] * 6  # nothing new for the drained server
    assert drained == [True] and slow == [(200, busy)]
    lb.apply(frontend(port, *(x for x in (a, b) if x.name == other)))
    assert set(statuses(lb)) == {other}
    assert [get(port) for _ in range(3)] == [(200, other)] * 3


def test_a_killed_haproxy_is_started_again_with_the_same_config(
    lb: HAProxy, apps: Callable[[str], App], port: int
) -> None:
    a, b = apps("a"), apps("b")
    config = frontend(port, a, b)
    lb.apply(config)
    wait_up(lb, "a", "b")
    lb.drain("web", "b", timeout=2)  # a state the restart must keep
    master = lb._master_pid()
    assert master is not None
    os.kill(master, signal.SIGKILL)
    wait_for(lambda: not lb.running(), 5, "haproxy gone")
    assert lb.ensure_running(config) is True
    assert lb._master_pid() != master and lb.running()
    assert statuses(lb) == {"a": "UP", "b": "DRAIN"}  # the saved states came back
    assert [get(port) for _ in range(4)] == [(200, "a")] * 4
    assert lb.ensure_running(config) is False


def test_a_server_that_came_up_since_the_last_reload_is_up_at_once_after_a_kill(
    lb: HAProxy, apps: Callable[[str], App], port: int
) -> None:
    a, b = apps("a"), apps("b")
    lb.apply(frontend(port, a))
    wait_up(lb, "a")
    config = frontend(port, a, b)
    lb.apply(config)  # b joins held DOWN, and the state file says so
    wait_up(lb, "b")
    lb.save_state()
    os.kill(lb._master_pid() or 0, signal.SIGKILL)
    wait_for(lambda: not lb.running(), 5, "haproxy gone")
    assert lb.ensure_running(config) is True
    assert statuses(lb) == {"a": "UP", "b": "UP"}  # not DOWN until two more checks pass


def test_servers_drained_at_once_are_all_drained_and_remembered(
    lb: HAProxy, apps: Callable[[str], App], port: int
) -> None:
    members = [apps(name) for name in ("a", "b", "c", "d", "e", "f")]
    config = frontend(port, *members)
    lb.apply(config)
    wait_up(lb, *(m.name for m in members))
    drained: list[bool | str] = []

    def drain(name: str) -> None:
        try:
            drained.append(lb.drain("web", name, timeout=5))
        except Exception as err:  # recorded, so the assertion below shows it
            drained.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=drain, args=(m.name,)) for m in members[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert drained == [True] * 5
    os.kill(lb._master_pid() or 0, signal.SIGKILL)
    wait_for(lambda: not lb.running(), 5, "haproxy gone")
    lb.ensure_running(config)
    assert statuses(lb) == {"a": "UP", **{m.name: "DRAIN" for m in members[1:]}}


def test_a_refused_config_leaves_the_running_haproxy_alone(
    lb: HAProxy, apps: Callable[[str], App], port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = apps("a")
    lb.apply(frontend(port, a))
    before = (lb._worker_pid(), lb.config_path.read_text())
    monkeypatch.setattr(haproxy_module, "render_config", lambda f, d: before[1] + "backend be_x\n    bogus 1\n")
    with pytest.raises(LoadBalancerError, match="bogus"):
        lb.apply(frontend(port, a))
    assert (lb._worker_pid(), lb.config_path.read_text()) == before
    wait_up(lb, "a")
    assert get(port) == (200, "a")


def test_stop_leaves_no_process(lb: HAProxy, apps: Callable[[str], App], port: int) -> None:
    lb.apply(frontend(port, apps("a")))
    master, worker = lb._master_pid(), lb._worker_pid()
    assert master and worker and _pid_alive(master) and _pid_alive(worker)
    lb.stop()
    assert not _pid_alive(master) and not _pid_alive(worker)
    assert not lb.running() and not lb.admin_socket.exists() and not lb.pid_path.exists()
    with pytest.raises(httpx.ConnectError):
        get(port, timeout=1)
