"""The `flexvm` command as a user runs it, talking HTTP to a real server (uvicorn, in this process,
on the fake host: see the ``server_url`` fixture). Most commands run through the CLI's entry point
``main()`` in this process, for speed; the error paths also run as the installed `flexvm` program.

Pins: create waits and says the VM is ready; `-o json` prints the API's own shapes; errors are one
'error:' line on stderr with exit code 1 and never a traceback; --no-wait prints the operation;
operation list/show; size list's FIT NOW column; a server that is not there is said plainly.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import httpx
import pytest

from flexvm.cli import client as cli_client
from flexvm.cli.main import main
from flexvm.drivers.fake import FakeDriver
from flexvm.operations.run import Run
from flexvm.platform import Platform
from tests.conftest import TOKEN
from tests.helpers import wait_for
from tests.unit.pool_helpers import add_host

FLEXVM = str(Path(sys.executable).parent / "flexvm")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def cli_env(server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FLEXVM_URL", server_url)
    monkeypatch.setenv("FLEXVM_TOKEN", TOKEN)
    monkeypatch.setenv("FLEXVM_HOME", str(tmp_path / "cli-home"))
    return server_url


@pytest.fixture
def http(cli_env: str) -> httpx.Client:
    with httpx.Client(base_url=cli_env, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Cli:
    """Runs `flexvm ARGS` through its entry point, capturing what it prints and its exit code."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "argv", ["flexvm", *args])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        return result.stdout


@pytest.fixture
def flexvm(cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    # The client polls operations every 0.3 s, made for people; operations on the fake host take
    # milliseconds, so in this process it polls faster (only the client module's clock is changed).
    quick = types.SimpleNamespace(monotonic=time.monotonic, sleep=lambda seconds: time.sleep(min(seconds, 0.02)))
    monkeypatch.setattr(cli_client, "time", quick)
    return Cli(monkeypatch, capsys)


def program(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `flexvm` program, as a separate process."""
    return subprocess.run([FLEXVM, *args], capture_output=True, text=True, timeout=60)


def platform_server(http: httpx.Client) -> str:
    """The short id of the one server the tests' API runs in."""
    return str(http.get("/v1/servers").json()[0]["id"][:8])


def assert_clean_error(result: Result | subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.startswith("error: "), result.stderr
    assert words in result.stderr


# --- VMs -----------------------------------------------------------------------------------


def test_vm_create_waits_and_says_ready(flexvm: Cli, fake_host: FakeDriver, image: str) -> None:
    out = flexvm.ok("vm", "create", "web1", "--size", "Standard_B1s", "--image", "img")
    assert re.search(r"web1 is ready [\d.]+ s after power-on", out), out
    assert "Standard_B1s" in out
    assert fake_host.host.guests["web1"].spec.name == "web1"
    listed = flexvm.ok("vm", "list")
    assert re.search(r"web1\s+Standard_B1s\s+img\s+local\s+running\s+succeeded", listed), listed


def test_json_output_is_the_apis_own_shape(flexvm: Cli, http: httpx.Client, image: str) -> None:
    created = json.loads(flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img", "-o", "json"))
    from_api = http.get("/v1/vms/web1").json()
    assert created == from_api
    assert json.loads(flexvm.ok("vm", "show", "web1", "-o", "json")) == from_api
    assert json.loads(flexvm.ok("vm", "list", "-o", "json")) == http.get("/v1/vms").json()


def test_stop_start_and_delete(flexvm: Cli, fake_host: FakeDriver, image: str) -> None:
    flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img")
    assert re.search(r"power state\s+stopped", flexvm.ok("vm", "stop", "web1"))
    assert re.search(r"power state\s+running", flexvm.ok("vm", "start", "web1"))
    assert "deleted web1" in flexvm.ok("vm", "delete", "web1")
    assert fake_host.host.guests == {}
    assert_clean_error(flexvm("vm", "show", "web1"), "VM 'web1' not found")


def test_console_prints_the_log(flexvm: Cli, image: str) -> None:
    flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img")
    assert "flexvm: ready name=web1" in flexvm.ok("vm", "console", "web1")


def test_no_wait_prints_the_operation(flexvm: Cli, http: httpx.Client, image: str) -> None:
    out = flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img", "--no-wait")
    match = UUID.search(out)
    assert match is not None, out
    assert out.startswith(f"operation {match.group()} ")
    assert "vm.create web1" in out
    operation = http.get(f"/v1/operations/{match.group()}").json()
    assert (operation["kind"], operation["target_name"]) == ("vm.create", "web1")
    flexvm.ok("operation", "wait", match.group())
    assert http.get("/v1/vms/web1").json()["power_state"] == "running"


def test_no_wait_json_is_the_operation(flexvm: Cli, http: httpx.Client, image: str) -> None:
    out = flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img", "--no-wait", "-o", "json")
    operation = json.loads(out)
    assert operation["kind"] == "vm.create"
    assert http.get(f"/v1/operations/{operation['id']}").status_code == 200


# --- errors --------------------------------------------------------------------------------


def test_an_error_is_one_line_on_stderr_and_exit_1(flexvm: Cli, image: str) -> None:
    result = flexvm("vm", "create", "web1", "-s", "Standard_Huge", "-i", "img")
    assert_clean_error(result, "size: unknown size 'Standard_Huge'")
    assert "Standard_B1s" in result.stderr  # it says which sizes exist
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


def test_the_installed_program_prints_errors_without_a_traceback(cli_env: str, image: str) -> None:
    result = program("vm", "create", "web1", "-s", "Standard_Huge", "-i", "img")
    assert_clean_error(result, "size: unknown size 'Standard_Huge'")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    usage = program("vm", "create", "web1", "--image", "img")
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr and "--size" in usage.stderr


def test_a_failed_operation_exits_1_with_its_reason(
    flexvm: Cli, platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    platform.booter.settings = dataclasses.replace(platform.booter.settings, ready_timeout=1.0)
    fake_host.host.ready_delay = None
    result = flexvm("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img")
    assert_clean_error(result, "vm.create of web1 failed: VM 'web1' did not report ready within 1 s")
    assert result.stderr.rstrip().endswith("see `flexvm vm console web1`"), "the hint, after the console's tail"


def test_a_refusal_names_the_flag_that_would_allow_it(flexvm: Cli, image: str) -> None:
    flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img", "--max-size", "Standard_B1s")
    result = flexvm("vm", "resize", "web1", "-s", "Standard_B1ms")
    assert_clean_error(result, "resizing it needs a restart; add --allow-restart to resize it with a restart")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Standard_B1ms" in flexvm.ok("vm", "resize", "web1", "-s", "Standard_B1ms", "--allow-restart")


def test_a_wrong_token_is_said_plainly(flexvm: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXVM_TOKEN", "wrong")
    assert_clean_error(flexvm("vm", "list"), "missing or wrong bearer token")


def test_usage_errors_are_not_tracebacks(flexvm: Cli) -> None:
    result = flexvm("vm", "create", "web1", "--image", "img")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--size" in result.stderr


def test_server_down_is_said_plainly(flexvm: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("FLEXVM_URL", f"http://127.0.0.1:{port}")
    assert_clean_error(flexvm("vm", "list"), f"cannot reach the flexvm server at http://127.0.0.1:{port}")
    assert_clean_error(program("vm", "list"), f"cannot reach the flexvm server at http://127.0.0.1:{port}")


# --- operations and sizes ------------------------------------------------------------------


def test_operation_list_and_show(flexvm: Cli, http: httpx.Client, image: str) -> None:
    flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img")
    operation = http.get("/v1/operations", params={"target": "web1"}).json()[0]
    listed = flexvm.ok("operation", "list")
    assert re.search(rf"{operation['id'][:8]}\s+vm\.create\s+web1\s+succeeded\s+100%", listed), listed
    shown = flexvm.ok("operation", "show", operation["id"][:8])  # the short id `list` shows is enough
    assert operation["id"] in shown
    for step in ("claim", "image", "os-disk", "define", "start", "wait-ready", "running"):
        assert re.search(rf"{step}\s+done\s+\S+\s+\S+\s+{platform_server(http)}\s+1\s", shown), shown
    assert json.loads(flexvm.ok("operation", "show", operation["id"], "-o", "json")) == operation


def test_operation_cancel_stops_a_running_operation_and_says_what_was_undone(flexvm: Cli, platform: Platform) -> None:
    gate = threading.Event()
    made: list[str] = []

    def slow(run: Run) -> dict[str, str]:
        run.step("make", lambda: made.append("thing"), undo=lambda _out: made.remove("thing"))
        gate.set()
        for _ in range(500):  # a long step that looks for a cancel as it goes, as a migration does
            run.check_canceled()
            time.sleep(0.01)
        return {}

    platform.engine.register("test.slow", slow, cancelable=True)
    with platform.db.session() as session:
        operation = platform.engine.record(session, "test.slow", "test", "t1")
    platform.engine.launch(operation)
    assert gate.wait(10)
    said = flexvm.ok("operation", "cancel", operation.id[:8])
    assert f"operation {operation.id[:8]} (test.slow of t1) canceled; undone: make" in said
    assert made == []
    shown = json.loads(flexvm.ok("operation", "show", operation.id, "-o", "json"))
    assert (shown["status"], shown["cancel_requested"]) == ("canceled", True)
    assert [(s["name"], s["status"]) for s in shown["steps"]] == [("make", "undone")]
    assert_clean_error(flexvm("operation", "cancel", operation.id), "already finished (canceled)")


def test_an_operation_that_cannot_be_canceled_says_so(flexvm: Cli, http: httpx.Client, image: str) -> None:
    flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img")
    operation = http.get("/v1/operations", params={"target": "web1"}).json()[0]
    assert_clean_error(flexvm("operation", "cancel", operation["id"]), "already finished (succeeded)")


def test_server_list_shows_this_server_leading(flexvm: Cli, platform: Platform) -> None:
    wait_for(lambda: platform.engine.leader.is_leader(), 10, "the only server leads")
    listed = flexvm.ok("server", "list")
    me = platform.engine.server_id
    assert re.search(rf"{me[:8]}\s+up\s+yes\s+", listed), listed
    servers = json.loads(flexvm.ok("server", "list", "-o", "json"))
    assert [(s["id"], s["state"], s["leader"]) for s in servers] == [(me, "up", True)]


def fit_now(table: str, size: str) -> int:
    header = table.splitlines()[0]
    assert "FIT NOW" in header, table
    row = next(line for line in table.splitlines() if line.startswith(size + " "))
    return int(row.split()[-1])


def test_size_list_shows_how_many_fit_now(flexvm: Cli, image: str) -> None:
    assert fit_now(flexvm.ok("size", "list"), "Standard_B1s") == 7
    flexvm.ok("vm", "create", "web1", "-s", "Standard_B1s", "-i", "img")
    assert fit_now(flexvm.ok("size", "list"), "Standard_B1s") == 6


def test_size_create_and_delete(flexvm: Cli, http: httpx.Client) -> None:
    assert "size Lab_1: 1 vCPU, 512M memory, 2G disk" in flexvm.ok(
        "size", "create", "Lab_1", "--vcpus", "1", "--memory", "512M", "--disk", "2G"
    )
    assert "Lab_1" in {s["name"] for s in http.get("/v1/sizes").json()}
    assert_clean_error(
        flexvm("size", "create", "Lab_2", "--vcpus", "1", "--memory", "lots", "--disk", "2G"), "memory: 'lots'"
    )
    assert "deleted size Lab_1" in flexvm.ok("size", "delete", "Lab_1")


# --- shared storage ------------------------------------------------------------------------


def test_storage_add_show_and_a_vm_on_it_in_table_form(flexvm: Cli, image: str, tmp_path: Path) -> None:
    path = f"/srv/flexvm-cli-{tmp_path.name}"
    added = flexvm.ok("storage", "add", "nas", "--path", path)
    assert f"storage nas at {path}: every host reaches it" in added
    assert re.search(r"local\s+yes", added), added
    flexvm.ok("vm", "create", "db", "--size", "Standard_B1s", "--image", image, "--storage", "nas")
    assert "shared storage nas" in flexvm.ok("vm", "show", "db")
    shown = flexvm.ok("storage", "show", "nas")
    assert re.search(r"VMs\s+db", shown) and re.search(r"local\s+yes", shown), shown
    assert_clean_error(flexvm("storage", "remove", "nas"), "still holds the disks of: db")
    assert_clean_error(flexvm("storage", "add", "nas", "--path", "relative"), "not an absolute path")
    assert_clean_error(
        flexvm("vm", "create", "db2", "--size", "Standard_B1s", "--image", image, "--storage", "san"),
        "unknown storage 'san'",
    )


def test_ha_and_fencing_in_table_form(flexvm: Cli, platform: Platform, fake_host: FakeDriver, image: str) -> None:
    path = "/srv/flexvm-cli-ha-" + fake_host.uri.rsplit("/", 1)[-1][:8]
    flexvm.ok("storage", "add", "nas", "--path", path)
    flexvm.ok("vm", "create", "db", "--size", "Standard_B1s", "--image", image, "--storage", "nas", "--ha",
              "--ha-priority", "5")  # fmt: skip
    assert re.search(r"HA\s+on, priority 5", flexvm.ok("vm", "show", "db"))
    assert re.search(r"HA\s+off", flexvm.ok("vm", "update", "db", "--no-ha"))
    flexvm.ok("vm", "update", "db", "--ha")
    assert_clean_error(flexvm("vm", "update", "db"), "nothing to change")
    assert_clean_error(flexvm("host", "update", "local", "--fence-agent", "ipmi"), "needs address, password_file, user")
    assert_clean_error(flexvm("host", "update", "local", "--fence-option", "address"), "takes KEY=VALUE")
    shown = flexvm.ok("host", "update", "local", "--fence-agent", "manual")
    assert re.search(r"fence agent\s+manual", shown), shown
    assert_clean_error(flexvm("host", "fence-confirm", "local"), "it answers its checks")
    # It fails: its VM waits for the operator; confirmed, there is no other host, and it says so.
    platform.failover.settings = dataclasses.replace(platform.settings, fail_seconds=0.0)
    fake_host.host.reachable = False
    platform.health.check_all()
    assert "waiting for an operator" in flexvm.ok("host", "show", "local")
    flexvm.ok("host", "fence-confirm", "local")
    shown = flexvm.ok("host", "show", "local")
    assert re.search(r"state\s+fenced", shown) and re.search(r"last failure\s+detected", shown), shown
    assert re.search(r"db\s+not restarted: its host local is fenced and no other host can take it", shown), shown
    assert "an operator (admin) confirmed" in shown


# --- rolling maintenance -----------------------------------------------------------------------


def test_maintenance_plan_run_pause_and_cancel_in_table_form(flexvm: Cli, platform: Platform, image: str) -> None:
    platform.maintenance.probe_interval = 0.01
    assert_clean_error(flexvm("maintenance", "status"), "no maintenance run has been started")
    assert_clean_error(flexvm("maintenance", "plan"), "name the hosts to maintain (--hosts A,B)")
    flexvm.ok("vm", "create", "web", "--size", "Standard_B1s", "--image", image)
    add_host(platform, "b")
    plan = flexvm.ok("maintenance", "plan", "--all")
    assert "2 host(s) in 2 batch(es), 1 at a time" in plan and "plus the hook's own time" in plan, plan
    assert "web: local -> b (live), and back" in plan and "every batch's running VMs fit" in plan, plan
    assert_clean_error(flexvm("maintenance", "run", "--hosts", "b,nosuch", "--hook", "true"), "nosuch")
    paused = flexvm("maintenance", "run", "--all", "--hook", "exit 4")
    assert_clean_error(paused, "the maintenance run paused: b: the hook exited with status 4")
    assert re.search(r"b\s+updating", paused.stdout) and re.search(r"local\s+waiting", paused.stdout), paused.stdout
    status = flexvm.ok("maintenance", "status")
    assert re.search(r"state\s+paused: b: the hook exited with status 4", status), status
    assert "flexvm maintenance resume" in status
    canceled = flexvm.ok("maintenance", "cancel")
    assert re.search(r"state\s+cancel(ing|ed)", canceled), canceled
    wait_for(lambda: "canceled" in flexvm.ok("maintenance", "status"), 15, "the cancel")
    assert re.search(r"state\s+maintenance", flexvm.ok("host", "show", "b"))  # its update began: left drained
    flexvm.ok("host", "undrain", "b")
    done = flexvm.ok("maintenance", "run", "--hosts", "local", "--hook", "true")
    assert re.search(r"state\s+succeeded", done) and re.search(r"local\s+done", done), done
    assert "the hook took" in flexvm.ok("maintenance", "plan", "--all")
