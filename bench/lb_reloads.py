"""What a hitless reload of flexvm's HAProxy costs the clients, against the same load with no reload.

Two tiny HTTP servers on 127.0.0.1 stand for a scale set's instances; flexvm's own HAProxy sits in
front of them. Two client styles send a bounded load through it (a fresh connection per request,
as curl in a loop; and one kept-alive connection per worker, as a browser or an SDK), first with
no change to the load balancer (the baseline), then while the backends change and HAProxy is
reloaded every second. Printed per style: requests, failures, median and 99th-percentile latency,
and the latency ratios against the baseline; then the time one reload (``HAProxy.apply``) takes.

Loopback only; every load stops after LOAD_SECONDS or MAX_REQUESTS, whichever comes first.

    .venv/bin/python bench/lb_reloads.py
"""

from __future__ import annotations

import http.server
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import httpx  # noqa: E402

from flexvm.scaling.haproxy import Backend, Frontend, HAProxy  # noqa: E402

WORKERS = 2
LOAD_SECONDS = 14.0  # room for RELOADS reloads a second apart, each ~0.2 s
MAX_REQUESTS = 12000  # per phase, over all workers: a bound, above what LOAD_SECONDS allows here
RELOADS = 10


def start_backend(name: str) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    class QuietServer(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # HAProxy's health checks hang up without reading the answer

    server = QuietServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, url: str, keep_alive: bool) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        threads = [threading.Thread(target=self._work, args=(url, keep_alive, deadline)) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _work(self, url: str, keep_alive: bool, deadline: float) -> None:
        client = httpx.Client(trust_env=False, timeout=5) if keep_alive else None
        try:
            while time.monotonic() < deadline:
                with self.lock:
                    if len(self.latencies) + self.failures >= MAX_REQUESTS:
                        return
                started = time.perf_counter()
                try:
                    response = client.get(url) if client else httpx.get(url, timeout=5, trust_env=False)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self.lock:
                    if ok:
                        self.latencies.append(time.perf_counter() - started)
                    else:
                        self.failures += 1
                time.sleep(0.002)
        finally:
            if client is not None:
                client.close()

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    binary = shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin")
    if binary is None:
        sys.exit("haproxy is not installed (scripts/setup.sh installs it)")
    backends = [start_backend(name) for name in ("a", "b", "c")]
    members = [Backend(name, "127.0.0.1", int(b.server_address[1])) for name, b in zip("abc", backends, strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        lb = HAProxy(Path(tmp) / "lb", binary=binary)
        port = _free_port()

        def config(count: int) -> list[Frontend]:
            return [Frontend("bench", "127.0.0.1", port, 80, tuple(members[:count]), "/")]

        reload_seconds: list[float] = []

        def reloader(stop: threading.Event) -> None:
            for n in range(RELOADS):
                if stop.wait(1.0):
                    return
                started = time.perf_counter()
                lb.apply(config(3 if n % 2 == 0 else 2))
                reload_seconds.append(time.perf_counter() - started)

        try:
            lb.apply(config(2))
            time.sleep(2.5)  # both backends through their first checks
            url = f"http://127.0.0.1:{port}/"
            print(f"{'client':<22}{'phase':<14}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'p50 x':>7}")
            for keep_alive in (False, True):
                style = "keep-alive" if keep_alive else "new connection each"
                baseline = Phase()
                baseline.run(url, keep_alive)
                reloading = Phase()
                reloads_before = len(reload_seconds)
                stop = threading.Event()
                changer = threading.Thread(target=reloader, args=(stop,))
                changer.start()
                reloading.run(url, keep_alive)
                stop.set()
                changer.join()
                done = len(reload_seconds) - reloads_before
                for label, phase in (("no reload", baseline), (f"{done} reloads", reloading)):
                    ratio = phase.quantile(0.5) / baseline.quantile(0.5)
                    print(
                        f"{style:<22}{label:<14}{len(phase.latencies) + phase.failures:>9}{phase.failures:>8}"
                        f"{phase.quantile(0.5) * 1000:>9.2f}{phase.quantile(0.99) * 1000:>9.2f}{ratio:>7.2f}"
                    )
                lb.apply(config(2))
            print(f"\none reload (HAProxy.apply): median {statistics.median(reload_seconds) * 1000:.0f} ms "
                  f"over {len(reload_seconds)}")  # fmt: skip
        finally:
            lb.stop()
            for backend in backends:
                backend.shutdown()
                backend.server_close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
