"""The lab's pure parts: address planning, validation, configuration text, state round trip."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from flexvm import programs
from flexvm.errors import InvalidInput
from flexvm.lab import LabHost, LabSpec, LabState
from flexvm.lab.config import dnsmasq_argv, hosts_file, libvirtd_settings, reservation_line, set_conf_keys
from flexvm.lab.daemons import _proc_ipv4
from flexvm.lab.lab import sharing_note
from flexvm.lab.mountns import mounts_under
from flexvm.lab.plan import SHARED_PATH, check_no_overlap, check_spec, make_plan, parse_subnet, plan_for_state
from flexvm.lab.system import LAB_PROGRAMS, require_tools

ROOT = Path("/srv/flexvm/lab")


def plan_for(subnet: str, hosts: int = 3):  # noqa: ANN201
    return make_plan(ROOT, hosts, parse_subnet(subnet))


def test_default_plan_addresses_names_and_paths() -> None:
    plan = plan_for("10.213.0.0/24", hosts=2)
    assert plan.gateway == "10.213.0.1"
    assert plan.switch_address == "10.213.0.2"
    assert [h.address for h in plan.hosts] == ["10.213.0.11", "10.213.0.12"]
    assert [h.name for h in plan.hosts] == ["lab1", "lab2"]
    assert [h.netns for h in plan.hosts] == ["flexvm-lab1", "flexvm-lab2"]
    assert plan.hosts[0].uri == "qemu+tcp://10.213.0.11/system"
    assert plan.hosts[1].root == ROOT / "lab2"
    assert plan.dhcp_range == ("10.213.0.32", "10.213.0.239")
    assert plan.dynamic_range == ("10.213.0.240", "10.213.0.254")
    assert plan.state_file == ROOT / "state.json"
    assert plan.dhcp_hosts_dir == ROOT / "dhcp-hosts"
    assert all(p == ROOT or ROOT in p.parents for p in plan.owned_paths())


@pytest.mark.parametrize("subnet", ["10.213.0.0/24", "172.20.64.0/26", "192.168.0.0/16", "10.9.8.0/25"])
def test_every_planned_address_is_distinct_and_inside_the_subnet(subnet: str) -> None:
    plan = plan_for(subnet, hosts=8)
    network = ipaddress.ip_network(subnet)
    fixed = [plan.gateway, plan.switch_address, *(h.address for h in plan.hosts)]
    reserved = range(int(ipaddress.ip_address(plan.dhcp_range[0])), int(ipaddress.ip_address(plan.dhcp_range[1])) + 1)
    dynamic = range(
        int(ipaddress.ip_address(plan.dynamic_range[0])), int(ipaddress.ip_address(plan.dynamic_range[1])) + 1
    )
    assert len(set(fixed)) == len(fixed)
    for address in fixed:
        assert ipaddress.ip_address(address) in network
        assert int(ipaddress.ip_address(address)) not in reserved
        assert int(ipaddress.ip_address(address)) not in dynamic
    assert len(reserved) >= 16
    assert len(dynamic) == 15
    assert reserved[-1] + 1 == dynamic[0]  # disjoint and adjacent
    assert ipaddress.ip_address(dynamic[-1]) == network.broadcast_address - 1


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (LabSpec(0), "hosts"),
        (LabSpec(9), "hosts"),
        (LabSpec(True), "hosts"),  # type: ignore[arg-type]
        (LabSpec("2"), "hosts"),  # type: ignore[arg-type]
        (LabSpec(2, "10.213.0.1/24"), "subnet"),  # host bits set
        (LabSpec(2, "not-a-net"), "subnet"),
        (LabSpec(2, "fd00:1::/64"), "subnet"),
        (LabSpec(2, "10.0.0.0/8"), "subnet"),  # bigger than /16
        (LabSpec(2, "10.213.0.0/28"), "subnet"),  # too small for 8 hosts and the ranges
        (LabSpec(2, "8.8.8.0/24"), "subnet"),  # not private
        (LabSpec(2, "127.0.0.0/24"), "subnet"),
        (LabSpec(2, "192.0.2.0/24"), "subnet"),
        (LabSpec(2, "169.254.0.0/16"), "subnet"),
    ],
)
def test_bad_specs_name_the_field(spec: LabSpec, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_spec(spec)
    assert caught.value.field == field


def test_good_spec_gives_the_network() -> None:
    assert check_spec(LabSpec(8, "172.16.5.0/24")) == ipaddress.ip_network("172.16.5.0/24")


MACHINE = [
    (ipaddress.IPv4Network("0.0.0.0/0"), "route default dev eth0"),
    (ipaddress.IPv4Network("192.0.2.0/24"), "route 192.0.2.0/24 dev eth0"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "route 127.0.0.0/8 dev lo"),
    (ipaddress.IPv4Network("10.20.30.0/24"), "address 10.20.30.4/24 on wg0"),
]


def test_overlap_with_a_route_or_address_is_refused_and_default_route_ignored() -> None:
    check_no_overlap(ipaddress.IPv4Network("10.213.0.0/24"), MACHINE)
    for subnet in ("10.20.0.0/16", "10.20.30.128/25"):
        with pytest.raises(InvalidInput) as caught:
            check_no_overlap(ipaddress.IPv4Network(subnet), MACHINE)
        assert caught.value.field == "subnet"
        assert caught.value.details["overlaps"] == "10.20.30.0/24"
        assert "wg0" in caught.value.message


def test_set_conf_keys_replaces_settings_and_keeps_comments() -> None:
    text = '# listen_tcp = 1\nlisten_tcp = 0\nunix_sock_group = "libvirt"\n  auth_tcp="sasl"\n'
    out = set_conf_keys(text, {"listen_tcp": 1, "auth_tcp": "none", "listen_addr": 'a"b'})
    lines = out.splitlines()
    assert "# listen_tcp = 1" in lines
    assert "listen_tcp = 0" not in lines
    assert '  auth_tcp="sasl"' not in lines
    assert 'unix_sock_group = "libvirt"' in lines
    assert lines[-3:] == ["listen_tcp = 1", 'auth_tcp = "none"', 'listen_addr = "a\\"b"']


def test_libvirtd_settings_listen_on_the_host_address_only() -> None:
    settings = libvirtd_settings("10.213.0.11", "6e16e39f-7d23-4962-a8ab-b2aaf115fef7")
    assert settings["listen_tcp"] == 1
    assert settings["listen_tls"] == 0
    assert settings["auth_tcp"] == "none"
    assert settings["listen_addr"] == "10.213.0.11"
    assert settings["host_uuid"] == "6e16e39f-7d23-4962-a8ab-b2aaf115fef7"


def test_hosts_file_names_every_lab_host() -> None:
    text = hosts_file(plan_for("10.213.0.0/24", hosts=3))
    assert "10.213.0.11\tlab1" in text.splitlines()
    assert "10.213.0.13\tlab3" in text.splitlines()
    assert text.startswith("127.0.0.1\tlocalhost\n")


def test_dnsmasq_serves_dhcp_only_from_the_hosts_dir() -> None:
    plan = plan_for("10.213.0.0/24")
    argv = dnsmasq_argv(plan)
    assert argv[0] == "dnsmasq"
    assert "--port=0" in argv
    assert "--conf-file=/dev/null" in argv
    assert "--interface=labsw" in argv
    assert f"--dhcp-hostsdir={ROOT / 'dhcp-hosts'}" in argv
    assert "--dhcp-range=10.213.0.240,10.213.0.254,255.255.255.0,1h" in argv
    assert f"--pid-file={ROOT / 'switch' / 'dnsmasq.pid'}" in argv
    assert f"--dhcp-leasefile={ROOT / 'switch' / 'dnsmasq.leases'}" in argv
    assert "--dhcp-option=3" in argv  # no default route for guests: the lab network only


def test_reservation_line() -> None:
    assert reservation_line("52:54:00:AA:00:01", "10.213.0.32") == "52:54:00:aa:00:01,10.213.0.32\n"


def test_state_round_trip() -> None:
    state = LabState(
        subnet="10.213.0.0/24",
        switch_netns="flexvm-labsw",
        gateway="10.213.0.1",
        dhcp_range=("10.213.0.32", "10.213.0.239"),
        dhcp_hosts_dir=ROOT / "dhcp-hosts",
        dnsmasq_pid=42,
        hosts=[
            LabHost(
                "lab1",
                "10.213.0.11",
                "qemu+tcp://10.213.0.11/system",
                "flexvm-lab1",
                "br0",
                ROOT / "lab1",
                {"libvirtd": 7},
            )
        ],
        dynamic_range=("10.213.0.240", "10.213.0.254"),
        phase="up",
    )
    again = LabState.from_dict(state.to_dict())
    assert again == state


def test_missing_programs_name_their_debian_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(LAB_PROGRAMS) >= {"ip", "libvirtd", "virtlogd", "dnsmasq", "nsenter", "unshare"}
    assert set(LAB_PROGRAMS) <= set(programs.PROGRAMS)
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("dnsmasq", "libvirtd"):  # as on a machine without them: found nowhere
        monkeypatch.setitem(programs.PROGRAMS, name, programs.Program(programs.PROGRAMS[name].package, "", str(empty)))
    with pytest.raises(programs.ProgramMissing) as caught:
        require_tools()
    assert caught.value.details["missing"] == {"dnsmasq": "dnsmasq-base", "libvirtd": "libvirt-daemon"}
    assert "apt-get install dnsmasq-base libvirt-daemon" in caught.value.message


def test_mounts_under_a_root_deepest_first_with_escaped_names() -> None:
    mountinfo = "\n".join(
        [
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
            "44 27 254:0 /srv/flexvm/lab/ns /srv/flexvm/lab/ns rw - ext4 /dev/vda rw",
            "71 44 0:4 mnt:[1] /srv/flexvm/lab/ns/lab1.mnt rw - nsfs nsfs rw",
            r"80 27 0:4 / /srv/flexvm/lab\040two/x rw - tmpfs tmpfs rw",
            "81 27 0:4 / /srv/flexvm/labx rw - tmpfs tmpfs rw",
        ]
    )
    assert mounts_under(ROOT, mountinfo) == ["/srv/flexvm/lab/ns/lab1.mnt", "/srv/flexvm/lab/ns"]
    assert mounts_under(Path("/srv/flexvm/lab two"), mountinfo) == ["/srv/flexvm/lab two/x"]


def test_proc_net_tcp_address_encoding() -> None:
    assert _proc_ipv4("10.213.0.11") == "0B00D50A"
    assert _proc_ipv4("127.0.0.1") == "0100007F"


def test_a_plan_with_shared_storage_owns_its_directory_and_runs_virtlockd() -> None:
    plain = make_plan(ROOT, 2, parse_subnet("10.213.0.0/24"))
    shared = make_plan(ROOT, 2, parse_subnet("10.213.0.0/24"), shared=True)
    assert plain.shared_dir not in plain.owned_paths() and shared.shared_dir in shared.owned_paths()
    state = shared.to_state()
    assert state.shared_path == SHARED_PATH
    assert state.daemons == ("virtlogd", "virtlockd", "libvirtd")
    assert plain.to_state().daemons == ("virtlogd", "libvirtd")
    state.shared_how = "shared by bind-mount"
    again = LabState.from_dict(state.to_dict())
    assert (again.shared_path, again.shared_how) == (SHARED_PATH, "shared by bind-mount")
    assert plan_for_state(ROOT, again).shared and not plan_for_state(ROOT, plain.to_state()).shared


def test_the_sharing_note_names_what_the_kernel_lacks() -> None:
    assert sharing_note("nodev\tsysfs\n\text4\n").endswith(
        "this kernel offers no nfsd or nfs (not in /proc/filesystems)"
    )
    assert sharing_note("nodev\tnfsd\n\text4\n").endswith("this kernel offers no nfs (not in /proc/filesystems)")
    assert sharing_note("nodev\tnfsd\n\tnfs\n").endswith("NFS between lab namespaces is not built yet")
