"""Build flexvm's built-in "tiny" test image from installed Debian packages alone.

The image is three files: the Debian cloud kernel, a small initramfs of our own, and a
64 MiB ext4 root disk (qcow2). Debian's own initramfs-tools initrd takes ~14 s to boot under
TCG; ours does only what a tiny guest needs (load the virtio modules, mount the disk, hand
over), so a guest is ready in a few seconds even without KVM.

What runs inside the guest lives in ``guest/`` as plain shell scripts (busybox ash):

    init.sh         stage 1, /init of the initramfs: modules, then switch_root to the disk
    stage2.sh       stage 2, PID 1 for the guest's life: name, network, HTTP, hot-plug, ready line
    lib.sh          helpers shared by the scripts (console lines, cpu/memory/disk figures)
    http.sh         one HTTP request per run, started by ``nc -ll`` for each connection
    dhcp.sh         udhcpc's event script: sets the address and default route
    powerbutton.sh  waits for the ACPI power button, then syncs and powers off

Stage 2 and its helpers are shipped in both the initramfs and the disk, so the initramfs
alone boots to the ready line (no disk, no NIC) as well.

Needs: linux-image-cloud-amd64 (or any linux-image), busybox-static, e2fsprogs, qemu-utils.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flexvm import programs
from flexvm.errors import ImageError

KERNEL_PACKAGE = "linux-image-cloud-amd64"
GUEST_DIR = Path(__file__).with_name("guest")
# memhp_default_state=online: DIMMs plugged before boot (a hot-grown VM restarted) are online
# before the balloon can inflate; without it such a guest runs out of memory while booting.
# swiotlb=noforce: virtio needs no bounce buffer, and without this any <maxMemory> costs 64 MiB.
BASE_CMDLINE = "console=ttyS0 quiet panic=-1 memhp_default_state=online swiotlb=noforce"
DISK_SIZE_MIB = 64

# Modules the guest needs, by module name; their dependencies are found in modules.dep.
# evdev gives the power button a /dev/input/eventN node to read from.
REQUIRED_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon", "button", "evdev")
OPTIONAL_MODULES = ("virtio_rng",)

# Where the guest scripts go inside the guest (stage 1 is the initramfs's /init).
GUEST_LIB = "usr/lib/flexvm"
STAGE1_SCRIPT = "init.sh"
MODULES_LIST = "etc/flexvm/modules.load"


@dataclass(frozen=True)
class DebianKernel:
    version: str
    vmlinuz: Path
    modules_dir: Path


@dataclass(frozen=True)
class TinyImage:
    kernel: Path
    initrd: Path
    disk: Path  # qcow2
    cmdline: str
    ready_marker: str = "flexvm: ready"


# --------------------------------------------------------------------------- kernel


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders 6.1.0-10 before 6.1.0-9 correctly (numbers compare as numbers)."""
    parts = re.findall(r"\d+|[a-z]+", version.lower())
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def find_debian_kernel(boot_dir: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> DebianKernel:
    """The newest installed cloud kernel with its modules, else the newest of any flavour."""
    found: list[DebianKernel] = []
    for vmlinuz in boot_dir.glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules_dir = modules_root / version
        # A kernel without its modules cannot give us virtio (it is modular in Debian).
        if (modules_dir / "modules.dep").is_file():
            found.append(DebianKernel(version, vmlinuz, modules_dir))
    if not found:
        raise ImageError(
            f"no installed Linux kernel with modules found under {boot_dir} and {modules_root}; "
            f"install the Debian package {KERNEL_PACKAGE} (apt-get install {KERNEL_PACKAGE})"
        )
    cloud = [k for k in found if k.version.endswith("-cloud-amd64")]
    return max(cloud or found, key=lambda k: _version_key(k.version))


# --------------------------------------------------------------------------- modules


def module_name(path: str) -> str:
    """``.../hw_random/virtio-rng.ko.xz`` -> ``virtio_rng``, the name the kernel uses."""
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """modules.dep -> {module name: (path, dependency paths)}."""
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        table[module_name(path.strip())] = (path.strip(), tuple(deps.split()))
    return table


def module_load_order(
    modules_dep: str,
    wanted: Iterable[str],
    optional: Iterable[str] = (),
    builtin: Iterable[str] = (),
) -> list[str]:
    """Paths (relative to the modules dir) of ``wanted`` and all they depend on, each after its
    dependencies, as insmod needs them. Modules built into the kernel are skipped; a wanted
    module that is neither a module nor built in is an ImageError, an optional one is left out.
    """
    table = parse_modules_dep(modules_dep)
    builtin_names = set(builtin)
    order: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise ImageError(f"modules.dep has a dependency cycle through {name}")
        if name not in table:
            raise ImageError(f"modules.dep names {name} as a dependency but has no line for it")
        visiting.add(name)
        path, deps = table[name]
        for dep in deps:
            visit(module_name(dep))
        visiting.discard(name)
        done.add(name)
        order.append(path)

    for name in wanted:
        if name in table:
            visit(name)
        elif name not in builtin_names:
            raise ImageError(f"kernel module {name} is neither in modules.dep nor built in")
    for name in optional:
        if name in table:
            visit(name)
    return order


def _builtin_modules(modules_dir: Path) -> set[str]:
    path = modules_dir / "modules.builtin"
    if not path.is_file():
        return set()
    return {module_name(line.strip()) for line in path.read_text().splitlines() if line.strip()}


def _read_module(path: Path) -> bytes:
    """Module bytes, uncompressed here so the guest's insmod need not handle compression."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        raise ImageError(f"{path}: zstd-compressed modules are not supported by the tiny image")
    return data


# --------------------------------------------------------------------------- cpio


class NewcArchive:
    """Writer for the "newc" cpio format the kernel unpacks as an initramfs.

    Written here rather than with the cpio tool so the archive can hold /dev/console (the
    kernel opens it for init's stdio before anything is mounted) without root or mknod.
    Owners are root and times are zero so the same inputs give the same bytes.
    """

    MAGIC = b"070701"

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self._out.write(self.MAGIC + b"".join(b"%08X" % f for f in fields))
        self._out.write(encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def add_tree(self, root: Path) -> None:
        """Everything under ``root`` (dirs, files, symlinks), parents before children, sorted."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted(dirnames + filenames):
                path = base / name
                rel = path.relative_to(root).as_posix()
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    self.add_symlink(rel, os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    self.add_dir(rel, stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(rel, path.read_bytes(), stat.S_IMODE(st.st_mode))

    def finish(self) -> bytes:
        """The archive with its trailer; the kernel stops reading at TRAILER!!!."""
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


# --------------------------------------------------------------------------- tools


def _run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as err:
        raise ImageError(f"{' '.join(cmd)} failed: {err.stderr.strip() or err.returncode}") from err
    except subprocess.TimeoutExpired as err:
        raise ImageError(f"{' '.join(cmd)} did not finish in {err.timeout} s") from err
    return done.stdout


def _is_static_elf(path: Path) -> bool:
    """True when the ELF64 file has no program interpreter (PT_INTERP), i.e. needs no libc."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def _check_busybox() -> tuple[Path, list[str]]:
    """The host's static busybox and its applet names (the guest has no libc to link against)."""
    busybox = Path(programs.find("busybox"))
    if not _is_static_elf(busybox):
        raise ImageError(
            f"{busybox} is not statically linked: "
            "install the Debian package busybox-static (apt-get install busybox-static)"
        )
    applets = _run([str(busybox), "--list"]).split()
    needed = {"sh", "nc", "udhcpc", "switch_root", "insmod", "poweroff", "dd"}
    needed |= {"wget", "timeout", "head", "tail", "grep"}  # http.sh's /fetch
    missing = needed - set(applets)
    if missing:
        raise ImageError(f"{busybox} lacks applets {sorted(missing)}; install busybox-static")
    return busybox, applets


# --------------------------------------------------------------------------- image parts


def _stage_userland(root: Path, busybox: Path, applets: list[str]) -> None:
    """The tree shared by the disk and the initramfs: busybox, stage 2 and its helpers, /etc."""
    for d in ["bin", "dev", "proc", "sys", "run", "root", "etc/flexvm", "var/lib/flexvm", GUEST_LIB]:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in applets:
        if "/" not in applet and applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    # One bin directory for everything keeps PATH and the scripts simple.
    (root / "sbin").symlink_to("bin")
    (root / "usr/bin").symlink_to("../bin")
    (root / "usr/sbin").symlink_to("../bin")
    for script in sorted(GUEST_DIR.glob("*.sh")):
        if script.name != STAGE1_SCRIPT:
            target = root / GUEST_LIB / script.name
            shutil.copyfile(script, target)
            target.chmod(0o755)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/resolv.conf").write_text("")


def _build_initramfs(userland: Path, kernel: DebianKernel, target: Path) -> None:
    dep_text = (kernel.modules_dir / "modules.dep").read_text()
    order = module_load_order(dep_text, REQUIRED_MODULES, OPTIONAL_MODULES, _builtin_modules(kernel.modules_dir))
    archive = NewcArchive()
    archive.add_tree(userland)
    archive.add_dir("newroot")
    archive.add_char_device("dev/console", 5, 1)
    archive.add_file("init", (GUEST_DIR / STAGE1_SCRIPT).read_bytes(), 0o755)
    # Flat file names in load order; stage 1 insmods them line by line.
    names = []
    archive.add_dir("lib")
    archive.add_dir("lib/modules")
    for path in order:
        name = module_name(path) + ".ko"
        archive.add_file(f"lib/modules/{name}", _read_module(kernel.modules_dir / path))
        names.append(name)
    archive.add_file(MODULES_LIST, ("\n".join(names) + "\n").encode())
    # mtime=0: identical inputs give an identical initrd.
    target.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))


def _build_disk(userland: Path, work: Path, target: Path) -> None:
    mke2fs = programs.find("mke2fs")
    qemu_img = programs.find("qemu-img")
    (userland / "var/lib/flexvm/boots").write_text("0\n")
    raw = work / "disk.raw"
    # -d fills the filesystem from a directory, so no loop mount (and no root) is needed.
    options = ["-q", "-F", "-t", "ext4", "-L", "flexvm-root", "-m", "0", "-E", "root_owner=0:0"]
    _run([mke2fs, *options, "-d", str(userland), str(raw), f"{DISK_SIZE_MIB}M"])
    _run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(target)])


def build_tiny_image(out_dir: Path) -> TinyImage:
    """Build kernel, initrd and qcow2 root disk into ``out_dir`` (created if missing).

    Files appear under their final names only when complete, so a half-built image is never
    picked up by someone else.
    """
    out_dir = Path(out_dir)
    kernel = find_debian_kernel()
    if not os.access(kernel.vmlinuz, os.R_OK):
        raise ImageError(f"{kernel.vmlinuz} is not readable (Debian installs it mode 0600): build as root")
    busybox, applets = _check_busybox()
    out_dir.mkdir(parents=True, exist_ok=True)
    image = TinyImage(
        kernel=out_dir / "vmlinuz",
        initrd=out_dir / "initrd.img",
        disk=out_dir / "disk.qcow2",
        cmdline=BASE_CMDLINE,
    )
    with tempfile.TemporaryDirectory(prefix=".tiny-build-", dir=out_dir) as tmp:
        work = Path(tmp)
        userland = work / "root"
        _stage_userland(userland, busybox, applets)
        _build_initramfs(userland, kernel, work / "initrd.img")
        _build_disk(userland, work, work / "disk.qcow2")
        shutil.copyfile(kernel.vmlinuz, work / "vmlinuz")
        for part in (image.kernel, image.initrd, image.disk):
            os.replace(work / part.name, part)
    return image
