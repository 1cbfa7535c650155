"""`flexvm lab up` after the lab is made: registering its hosts, and undoing exactly that on failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flexvm.cli import lab as cli_lab
from flexvm.cli import output
from flexvm.errors import AlreadyExists, NotFound, ServerUnavailable
from flexvm.lab.model import LabHost, LabState


def lab_state(hosts: int) -> LabState:
    return LabState(
        subnet="10.213.0.0/24",
        switch_netns="flexvm-labsw",
        gateway="10.213.0.1",
        dhcp_range=("10.213.0.32", "10.213.0.239"),
        dhcp_hosts_dir=Path("/nowhere/dhcp-hosts"),
        dnsmasq_pid=1,
        hosts=[
            LabHost(
                f"lab{i}", f"10.213.0.1{i}", f"qemu+tcp://10.213.0.1{i}/system", f"flexvm-lab{i}", "br0", Path("/x")
            )
            for i in range(1, hosts + 1)
        ],
    )


class FakeLab:
    root = Path("/nowhere/lab")

    def __init__(self, hosts: int) -> None:
        self.calls: list[str] = []
        self.hosts = hosts

    def up(self, spec: Any) -> LabState:
        self.calls.append("up")
        return lab_state(self.hosts)

    def down(self) -> None:
        self.calls.append("down")


class FakeApi:
    """The server, as far as `lab up` talks to it; ``refuse`` makes one POST fail."""

    def __init__(self, refuse: tuple[str, str] | None = None, delete_error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.bodies: dict[str, dict[str, Any]] = {}
        self.refuse = refuse
        self.delete_error = delete_error

    def get(self, path: str) -> Any:
        self.calls.append(f"GET {path}")
        return []

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"POST {path} {body['name']}")
        self.bodies[f"{path} {body['name']}"] = body
        if self.refuse == (path, body["name"]):
            raise AlreadyExists(path.strip("/")[:-1], body["name"])
        return {"id": f"op-{body['name']}"}

    def delete(self, path: str) -> None:
        self.calls.append(f"DELETE {path}")
        if self.delete_error is not None and path.startswith("/hosts/"):
            raise self.delete_error
        if path == "/networks/lab" and "POST /networks lab" not in self.calls:
            raise NotFound("network", "lab")


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_lab, "_wait", lambda api, operation, label: {"result": {"accelerator": "tcg"}})
    monkeypatch.setattr(cli_lab, "status", lambda fmt: None)


def run_up(monkeypatch: pytest.MonkeyPatch, api: FakeApi, lab: FakeLab) -> None:
    monkeypatch.setattr(cli_lab, "client", lambda: api)
    monkeypatch.setattr(cli_lab, "_lab", lambda: lab)
    cli_lab.up(hosts=lab.hosts, host_cpus=None, host_memory=None, subnet="10.213.0.0/24", fmt=output.Format.table)


def test_registering_registers_the_network_then_each_host(quiet: None, monkeypatch: pytest.MonkeyPatch) -> None:
    api, lab = FakeApi(), FakeLab(3)
    run_up(monkeypatch, api, lab)
    assert [c for c in api.calls if c.startswith("POST")] == [
        "POST /networks lab",
        "POST /hosts lab1",
        "POST /hosts lab2",
        "POST /hosts lab3",
    ]
    assert lab.calls == ["up"]
    # Each is fenced by the lab's power switch: its failure restarts its HA VMs elsewhere.
    body = api.bodies["/hosts lab2"]
    assert body["fence_agent"] == "lab" and body["fence_options"] == {"root": "/nowhere/lab", "host": "lab2"}


def test_a_host_refused_removes_what_was_registered_newest_first_and_the_lab(
    quiet: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, lab = FakeApi(refuse=("/hosts", "lab3")), FakeLab(3)
    with pytest.raises(AlreadyExists):
        run_up(monkeypatch, api, lab)
    undone = api.calls[api.calls.index("POST /hosts lab3") + 1 :]
    # lab3 was never taken (a host of that name is someone else's): not deleted.
    assert undone == ["DELETE /hosts/lab2", "DELETE /hosts/lab1", "DELETE /networks/lab"]
    assert lab.calls == ["up", "down"]


def test_the_lab_comes_down_even_when_the_server_is_gone_too(quiet: None, monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(refuse=("/hosts", "lab2"), delete_error=ServerUnavailable("the server went away"))
    lab = FakeLab(2)
    with pytest.raises(AlreadyExists) as caught:  # the first failure is the story
        run_up(monkeypatch, api, lab)
    assert "the server went away" in " ".join(caught.value.__notes__)
    assert lab.calls == ["up", "down"]
