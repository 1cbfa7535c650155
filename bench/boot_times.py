"""Boot times: `flexvm vm create` against `virsh create` and raw `qemu-system-x86_64`, same run.

All three boot the same tiny image (same kernel, initramfs, and a fresh qcow2 overlay of the same
disk) with the same shape (1 vCPU, 512 MiB, the accelerator flexvm chose) and are timed from the
request to (a) the guest running and (b) its readiness line on the serial console. Prints a table
of medians and ratios against raw QEMU, the floor any platform pays.

    .venv/bin/python bench/boot_times.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import FlexvmServer, virsh, wait_for  # noqa: E402

READY = b"flexvm: ready"
INSTANCES = Path("/var/lib/libvirt/flexvm/instances")


def time_flexvm(server: FlexvmServer, image: str, name: str) -> tuple[float, float]:
    with server.api() as api:
        t0 = time.monotonic()
        op = api.post("/vms", json={"name": name, "size": "Standard_B1ls", "image": image}).json()
        running = None
        while True:
            op = api.get(f"/operations/{op['id']}").json()
            if running is None and any(s["name"] == "start" and s["status"] == "done" for s in op["steps"]):
                running = time.monotonic() - t0
            if op["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.02)
        ready = time.monotonic() - t0
        assert op["status"] == "succeeded", op["error"]
        return running or ready, ready


def wait_file_for(path: Path, needle: bytes, timeout: float = 120) -> None:
    wait_for(lambda: path.exists() and needle in path.read_bytes(), timeout, f"{needle!r} in {path}", interval=0.02)


def time_virsh(template_xml: str, name: str, backing: str, workdir: Path) -> tuple[float, float]:
    """The flexvm VM's own domain XML, renamed, with its own overlay and log, started by `virsh create`."""
    disk = INSTANCES / f"{name}-os.qcow2"
    log = INSTANCES / f"{name}.console.log"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(disk), "4G"], check=True
    )
    root = ET.fromstring(template_xml)
    root.find("name").text = name  # type: ignore[union-attr]
    root.remove(root.find("uuid"))  # type: ignore[arg-type]
    root.find("devices/disk[@device='disk']/source").set("file", str(disk))  # type: ignore[union-attr]
    backing_store = root.find("devices/disk[@device='disk']/backingStore")
    if backing_store is not None:
        root.find("devices/disk[@device='disk']").remove(backing_store)  # type: ignore[union-attr]
    root.find("devices/serial/log").set("file", str(log))  # type: ignore[union-attr]
    xml_path = workdir / f"{name}.xml"
    xml_path.write_text(ET.tostring(root, encoding="unicode"))
    try:
        t0 = time.monotonic()
        virsh("create", str(xml_path))
        running = time.monotonic() - t0
        wait_file_for(log, READY)
        return running, time.monotonic() - t0
    finally:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True)
        disk.unlink(missing_ok=True)
        log.unlink(missing_ok=True)


def time_qemu(accel: str, kernel: str, initrd: str, cmdline: str, backing: str, workdir: Path) -> tuple[float, float]:
    disk = workdir / f"raw-{uuid.uuid4().hex[:6]}.qcow2"
    log = workdir / f"{disk.stem}.log"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(disk), "4G"], check=True
    )
    argv = [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-machine",
        "pc",
        "-m",
        "512",
        "-smp",
        "1",
        "-nographic",
        "-nodefaults",
        "-no-user-config",
        "-kernel",
        kernel,
        "-initrd",
        initrd,
        "-append",
        f"{cmdline} flexvm.name=raw",
        "-drive",
        f"file={disk},if=virtio,format=qcow2",
        "-serial",
        f"file:{log}",
        "-netdev",
        "user,id=n0,restrict=on",
        "-device",
        "virtio-net-pci,netdev=n0",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        running = time.monotonic() - t0  # the process exists: QEMU's own "running"
        wait_file_for(log, READY)
        return running, time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
        disk.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {
        "flexvm vm create": [],
        "virsh create": [],
        "qemu-system-x86_64": [],
    }
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp:
        workdir = Path(tmp)
        server = FlexvmServer(workdir / "home")
        server.start()
        tag = f"bench-{uuid.uuid4().hex[:6]}"
        image = f"{tag}-tiny"
        try:
            server.ok("image", "build", "tiny", "--name", image)
            facts = server.ok("image", "show", image, "-o", "json").json()
            host = server.ok("host", "show", "local", "-o", "json").json()
            store = server.home / "images"
            kernel, initrd = str(store / facts["kernel_file"]), str(store / facts["initrd_file"])
            backing_image = str(store / f"{image}.qcow2")
            # A warm-up create puts the image on the host, as after a first use; its domain XML is the template.
            time_flexvm(server, image, f"{tag}-warm")
            template = virsh("dumpxml", f"{tag}-warm")
            libvirt_backing = ET.fromstring(template).find("devices/disk[@device='disk']/backingStore/source")
            backing = (libvirt_backing.get("file") if libvirt_backing is not None else None) or backing_image
            accel = "kvm" if host["accelerator"] == "kvm" else "tcg"
            for run in range(args.runs):
                results["flexvm vm create"].append(time_flexvm(server, image, f"{tag}-{run}"))
                results["virsh create"].append(time_virsh(template, f"{tag}-v{run}", backing, workdir))
                results["qemu-system-x86_64"].append(
                    time_qemu(accel, kernel, initrd, facts["cmdline"], backing, workdir)
                )
        finally:
            with server.api() as api:
                for vm in api.get("/vms").json():
                    op = api.delete(f"/vms/{vm['name']}").json()
                    server.wait_operation(op["id"])
                api.delete(f"/images/{image}")
            server.stop()
    report(results, args.runs, host["accelerator"])


def report(results: dict[str, list[tuple[float, float]]], runs: int, accelerator: str) -> None:
    base_run = statistics.median(r[0] for r in results["qemu-system-x86_64"])
    base_ready = statistics.median(r[1] for r in results["qemu-system-x86_64"])
    print(f"\nBoot of the tiny image, 1 vCPU / 512 MiB, {accelerator}, median of {runs} runs\n")
    print(f"{'':22} {'to running':>11} {'to ready':>9} {'ready vs qemu':>14}")
    for name, samples in results.items():
        running = statistics.median(s[0] for s in samples)
        ready = statistics.median(s[1] for s in samples)
        print(f"{name:22} {running:10.2f}s {ready:8.2f}s {ready / base_ready:13.2f}x")
    print(f"\n('to running' for raw QEMU is process start, {base_run * 1000:.0f} ms: it has no separate define/start.)")
    spread = {n: f"{min(s[1] for s in v):.2f}-{max(s[1] for s in v):.2f}s" for n, v in results.items()}
    print("ready range: " + ", ".join(f"{n} {r}" for n, r in spread.items()))


if __name__ == "__main__":
    main()
