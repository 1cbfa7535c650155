"""HAProxy's configuration and server-state file, rendered as pure text (and checked by the real binary)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from flexvm.errors import InvalidInput
from flexvm.scaling.haproxy_config import (
    STATE_FIELDS,
    Backend,
    Frontend,
    merge_server_state,
    new_server_state,
    render_config,
)

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


def web(*backends: Backend, name: str = "web", port: int = 8080) -> Frontend:
    return Frontend(name, "127.0.0.1", port, 80, tuple(backends), "/healthz")


TWO = web(Backend("web-0", "10.0.0.5", 80), Backend("web-1", "10.0.0.6", 8080))


def haproxy_check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert HAPROXY, "haproxy is not installed (scripts/setup.sh installs it)"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    return subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)


def test_rendering_is_pure_and_ordered() -> None:
    a = render_config([TWO, web(name="api", port=8081)], Path("/run/lb"))
    b = render_config([web(name="api", port=8081), TWO], Path("/run/lb"))
    assert a == b
    assert a.index("backend be_api") < a.index("backend be_web")


def test_global_section_has_master_worker_admin_socket_and_state_file() -> None:
    text = render_config([TWO], Path("/run/lb"))
    assert "    master-worker\n" in text
    assert "stats socket /run/lb/admin.sock mode 600 level admin expose-fd listeners" in text
    assert "server-state-file /run/lb/server-state" in text
    assert "load-server-state-from-file global" in text
    assert "    mode http\n" in text
    for line in ("retries 3", "option redispatch", "option http-server-close", "timeout connect"):
        assert f"    {line}" in text


def test_each_set_gets_a_frontend_and_a_checked_round_robin_backend() -> None:
    text = render_config([TWO], Path("/run/lb"))
    assert "frontend fe_web\n    bind 127.0.0.1:8080\n    default_backend be_web\n" in text
    assert "balance roundrobin" in text
    assert "option httpchk GET /healthz" in text
    assert "http-check expect status 200" in text
    servers = [line.split() for line in text.splitlines() if line.strip().startswith("server ")]
    assert [s[1:3] for s in servers] == [["web-0", "10.0.0.5:80"], ["web-1", "10.0.0.6:8080"]]
    for server in servers:  # every server is health-checked, joins after 2 passes, leaves after 2 failures
        words = " ".join(server[3:])
        assert "check" in server and "inter 1s" in words and "rise 2" in words and "fall 2" in words


def test_ipv6_addresses_are_written_so_haproxy_splits_at_the_last_colon() -> None:
    text = render_config([Frontend("v6", "::1", 8080, 80, (Backend("v6-0", "::1", 80),))], Path("/r"))
    assert "bind ::1:8080" in text and "server v6-0 ::1:80 " in text


@pytest.mark.parametrize(
    ("frontend", "field"),
    [
        (web(name="web site"), "frontends[0].name"),
        (web(name="web/1"), "frontends[0].name"),
        (web(name=""), "frontends[0].name"),
        (web(name="x" * 65), "frontends[0].name"),
        (web(Backend("web 0", "10.0.0.5", 80)), "frontends[0].backends[0].name"),
        (web(Backend("web-0;", "10.0.0.5", 80)), "frontends[0].backends[0].name"),
        (web(Backend("web-0", "example.com", 80)), "frontends[0].backends[0].address"),
        (web(Backend("web-0", "10.0.0.5", 0)), "frontends[0].backends[0].port"),
        (web(Backend("web-0", "10.0.0.5", 80), Backend("web-0", "10.0.0.6", 80)), "frontends[0].backends[1].name"),
        (web(port=70000), "frontends[0].port"),
        (Frontend("web", "localhost", 8080, 80, ()), "frontends[0].bind_address"),
        (Frontend("web", "127.0.0.1", 8080, 80, (), "/health check"), "frontends[0].probe_path"),
        (Frontend("web", "127.0.0.1", 8080, 80, (), "health"), "frontends[0].probe_path"),
    ],
)
def test_bad_input_is_refused_naming_the_field(frontend: Frontend, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        render_config([frontend], Path("/run/lb"))
    assert caught.value.field == field


def test_two_frontends_may_not_share_a_name_or_a_port() -> None:
    with pytest.raises(InvalidInput, match="two frontends"):
        render_config([web(), web(port=9000)], Path("/r"))
    with pytest.raises(InvalidInput, match="bound by another"):
        render_config([web(), web(name="api")], Path("/r"))


def test_a_set_with_no_instance_is_still_a_valid_frontend_and_backend(tmp_path: Path) -> None:
    text = render_config([web()], tmp_path)
    assert "backend be_web" in text and "    server " not in text
    done = haproxy_check(text, tmp_path)
    assert done.returncode == 0, done.stderr


def test_the_rendered_config_passes_haproxy_check(tmp_path: Path) -> None:
    v6 = Frontend("v6", "::1", 8081, 80, (Backend("v6-0", "::1", 80),), "/")
    done = haproxy_check(render_config([TWO, web(name="empty", port=8082), v6], tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_new_server_is_written_to_the_state_file_as_down() -> None:
    text = merge_server_state("", [TWO])
    lines = text.splitlines()
    assert lines[0] == "1" and lines[1] == "# " + " ".join(STATE_FIELDS)
    rows = [dict(zip(STATE_FIELDS, line.split(), strict=True)) for line in lines[2:]]
    assert [(r["be_name"], r["srv_name"], r["srv_addr"], r["srv_port"]) for r in rows] == [
        ("be_web", "web-0", "10.0.0.5", "80"),
        ("be_web", "web-1", "10.0.0.6", "8080"),
    ]
    for row in rows:
        assert row["srv_op_state"] == "0" and row["srv_check_health"] == "0"  # stopped, no check passed
        assert row["srv_check_status"] != "0"  # status 0 crashed HAProxy 2.6.12 at the first check


def test_a_known_server_keeps_its_saved_state_unless_its_address_changed() -> None:
    up = new_server_state("be_web", Backend("web-0", "10.0.0.5", 80))
    up[STATE_FIELDS.index("srv_op_state")] = "2"
    up[STATE_FIELDS.index("srv_admin_state")] = "8"  # drained through the runtime API
    moved = new_server_state("be_web", Backend("web-1", "10.0.0.99", 8080))
    moved[STATE_FIELDS.index("srv_op_state")] = "2"
    gone = new_server_state("be_web", Backend("web-9", "10.0.0.9", 80))
    saved = "1\n# header\n" + "\n".join(" ".join(line) for line in (up, moved, gone)) + "\n"
    rows = {
        r["srv_name"]: r
        for r in (
            dict(zip(STATE_FIELDS, line.split(), strict=True))
            for line in merge_server_state(saved, [TWO]).splitlines()[2:]
        )
    }
    assert set(rows) == {"web-0", "web-1"}  # web-9 is no longer configured
    assert (rows["web-0"]["srv_op_state"], rows["web-0"]["srv_admin_state"]) == ("2", "8")
    assert rows["web-1"]["srv_op_state"] == "0" and rows["web-1"]["srv_addr"] == "10.0.0.6"


def test_an_unreadable_saved_state_counts_as_nothing_saved() -> None:
    assert merge_server_state("garbage\n", [TWO]) == merge_server_state("", [TWO])
