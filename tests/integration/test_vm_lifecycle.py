"""Real tiny guests through the CLI and the API: what the guest sees, and what is left afterwards."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tests.helpers import FlexvmServer, console_lines, domains, pool_volumes, virsh, wait_for

MIB = 1024 * 1024
GIB = 1024 * MIB


def console(server: FlexvmServer, name: str) -> str:
    return server.ok("vm", "console", name).stdout


def test_cli_create_boots_a_guest_that_sees_its_size(server: FlexvmServer, tiny: str, vm_name: str) -> None:
    size = f"{vm_name}-size"
    server.ok("size", "create", size, "--vcpus", "2", "--memory", "384M", "--disk", "1G")
    created = server.ok("vm", "create", vm_name, "--size", size, "--image", tiny)
    assert f"{vm_name} is ready" in created.stdout

    ready = console_lines(console(server, vm_name), "flexvm: ready")
    assert len(ready) == 1, "one boot, one readiness line"
    facts = ready[0]
    assert facts["name"] == vm_name
    assert facts["cpus"] == "2"
    # MemTotal is what the kernel keeps after its own reservations: a little under what it was given.
    assert 300 * 1024 <= int(facts["mem_kib"]) <= 384 * 1024
    assert int(facts["disk_bytes"]) == 1 * GIB
    assert facts["ip"] == "10.0.2.15"  # DHCP from QEMU's user network

    # libvirt agrees: TCG here (domain type 'qemu'), 2 vCPUs, 384 MiB, ACPI, an overlay on the image.
    root = ET.fromstring(virsh("dumpxml", vm_name))
    host = server.ok("host", "show", "local", "-o", "json").json()
    assert root.get("type") == ("kvm" if host["accelerator"] == "kvm" else "qemu")
    assert root.findtext("vcpu") == "2"
    assert int(root.findtext("memory") or 0) == 384 * 1024
    assert root.find("features/acpi") is not None
    disk = root.find("devices/disk[@device='disk']/source")
    assert disk is not None and disk.get("file", "").endswith(f"{vm_name}-os.qcow2")
    backing = root.find("devices/disk[@device='disk']/backingStore/source")
    assert backing is not None and tiny in backing.get("file", ""), "the OS disk is an overlay on the image"

    vm = server.ok("vm", "show", vm_name, "-o", "json").json()
    assert vm["power_state"] == "running" and vm["provisioning_state"] == "succeeded"
    assert 0 < vm["boot_seconds"] < 90
    assert vm["nics"][0]["ip"] == "10.0.2.15"

    server.ok("vm", "delete", vm_name)
    assert vm_name not in domains()
    server.ok("size", "delete", size)


def test_api_lifecycle_stop_start_resize_deallocate_delete(server: FlexvmServer, tiny: str, vm_name: str) -> None:
    with server.api() as api:
        response = api.post("/vms", json={"name": vm_name, "size": "Standard_B1ls", "image": tiny})
        assert response.status_code == 202
        location = response.headers["location"]
        assert location.endswith(response.json()["id"])
        created = server.wait_operation(response.json()["id"])
        assert created["status"] == "succeeded", created["error"]
        assert [s["name"] for s in created["steps"]] == [
            "claim",
            "image",
            "os-disk",
            "define",
            "start",
            "booted",
            "wait-ready",
            "running",
        ]

        def act(verb: str, body: dict | None = None) -> dict:
            r = api.post(f"/vms/{vm_name}/{verb}", json=body or {})
            assert r.status_code == 202, r.text
            done = server.wait_operation(r.json()["id"])
            assert done["status"] == "succeeded", done["error"]
            return done

        # A graceful stop: the guest hears the ACPI power button and powers itself off.
        stopped = act("stop")
        assert stopped["result"]["forced"] is False
        assert "flexvm: poweroff" in console(server, vm_name)
        assert api.get(f"/vms/{vm_name}").json()["power_state"] == "stopped"
        assert vm_name in domains(), "a stopped VM keeps its domain and its claim"

        # Started again, it boots from the same OS disk: the boot counter on it says 2.
        act("start")
        boots = [line["boots"] for line in console_lines(console(server, vm_name), "flexvm: ready")]
        assert boots == ["1", "2"]

        # Grow the disk while it runs: the guest sees the new size without a restart.
        act("disk/resize", {"size": "6G"})
        wait_for(
            lambda: any(
                line.get("disk_bytes") == str(6 * GIB)
                for line in console_lines(console(server, vm_name), "flexvm: state")
            ),
            30,
            "the guest to report its grown disk",
        )
        assert api.get(f"/vms/{vm_name}").json()["disk_bytes"] == 6 * GIB

        act("restart")
        assert [line["boots"] for line in console_lines(console(server, vm_name), "flexvm: ready")][-1] == "3"

        # Deallocate: the domain goes, the host's CPU and memory are released, the disk stays.
        before = api.get("/hosts/local").json()
        act("deallocate")
        vm = api.get(f"/vms/{vm_name}").json()
        assert vm["power_state"] == "deallocated" and vm["host"] is None and vm["disk_host"] == "local"
        assert vm_name not in domains()
        assert f"{vm_name}-os.qcow2" in pool_volumes("flexvm-instances")
        after = api.get("/hosts/local").json()
        assert after["memory_mib_allocated"] == before["memory_mib_allocated"] - 512
        assert after["disk_bytes_allocated"] == before["disk_bytes_allocated"]

        # And back: redefined, the same disk (boot 4, still 6G).
        act("start")
        last = console_lines(console(server, vm_name), "flexvm: ready")[-1]
        assert last["boots"] == "4" and last["disk_bytes"] == str(6 * GIB)

        deleted = api.delete(f"/vms/{vm_name}")
        assert deleted.status_code == 202
        assert server.wait_operation(deleted.json()["id"])["status"] == "succeeded"
        assert api.get(f"/vms/{vm_name}").status_code == 404

    assert vm_name not in domains()
    assert not {v for v in pool_volumes("flexvm-instances") if v.startswith(vm_name)}, "disks, log and seed are gone"
