"""Fresh-machine truth: every program flexvm runs is listed, and comes from a package setup.sh installs.

- Each listed program is found as the runners find it (``programs.find``), and ``dpkg -S`` on its
  path must name the package the list says, which must be one ``scripts/setup.sh`` installs (its
  ``PACKAGES`` list, read from the script itself). So dropping an install step from setup.sh fails
  here on any machine, not only on a fresh one where the program is missing.
- The source is scanned for programs run without the list: a subprocess call whose command starts
  with a literal name, ``shutil.which``, and the lab's command lists (``[*inside, "mount", …]``,
  ``("libvirtd", "--daemon", …)``). Each name found must be listed; and only flexvm.programs may
  look a program up.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

from flexvm import programs
from flexvm.errors import FlexvmError

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "flexvm"
SETUP = ROOT / "scripts" / "setup.sh"

# Calls that start a process. (os.system and friends go through a shell: flexvm never may.)
SPAWNERS = {"run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec", "spawn"}
SHELLS = {"system", "popen", "create_subprocess_shell"}
# flexvm's own runners, which find argv[0] (and a wrapped command's) through flexvm.programs.
RUNNERS = {"run", "_run", "_start", "command"}
PROGRAM_NAME = re.compile(r"^[A-Za-z][\w.+-]*$")


# --------------------------------------------------------------------------- setup.sh


def setup_packages(text: str) -> set[str]:
    """The words of setup.sh's ``PACKAGES=( … )`` array, comments left out."""
    found = re.search(r"^PACKAGES=\((.*?)^\)", text, re.MULTILINE | re.DOTALL)
    assert found, f"no PACKAGES=( … ) array in {SETUP}"
    return {word for line in found[1].splitlines() for word in line.split("#", 1)[0].split()}


def test_setup_packages_are_read_from_the_script() -> None:
    text = "x=1\nPACKAGES=(\n    a b   # the a and b\n    # only a comment\n    c\n)\nmore=(d)\n"
    assert setup_packages(text) == {"a", "b", "c"}


INSTALLED_BY_SETUP = setup_packages(SETUP.read_text())


@pytest.mark.parametrize("name", sorted(programs.PROGRAMS))
def test_each_program_s_package_is_installed_by_setup(name: str) -> None:
    package = programs.PROGRAMS[name].package
    assert package in INSTALLED_BY_SETUP, f"{name} comes from {package}, which scripts/setup.sh does not install"


# --------------------------------------------------------------------------- dpkg -S


def merged_usr_aliases(path: str) -> list[str]:
    """Debian 12 merges /bin into /usr/bin (and sbin, lib), but dpkg still records each file where
    its package put it: /usr/sbin/ip is known to dpkg as /sbin/ip."""
    if path.startswith("/usr/"):
        return [path, path[len("/usr") :]]
    return [path, "/usr" + path]


def dpkg_owner(path: str) -> tuple[str | None, list[str]]:
    """The package dpkg says installed ``path`` (tried as found, then with symlinks resolved, each
    with its merged-/usr alias), and what was asked."""
    asked = []
    for candidate in dict.fromkeys([*merged_usr_aliases(path), *merged_usr_aliases(os.path.realpath(path))]):
        asked.append(candidate)
        done = subprocess.run(
            [programs.find("dpkg"), "-S", candidate], capture_output=True, text=True, timeout=60, check=False
        )
        for line in done.stdout.splitlines():
            owners, _, owned = line.rpartition(": ")
            if owned == candidate and not owners.startswith("diversion"):
                return owners.split(",")[0].strip().split(":")[0], asked  # "libfoo:amd64" -> libfoo
    return None, asked


@pytest.mark.parametrize("name", sorted(programs.PROGRAMS))
def test_each_program_is_found_and_dpkg_names_its_listed_package(name: str) -> None:
    path = programs.find(name)  # ProgramMissing here names the package setup.sh should install
    owner, asked = dpkg_owner(path)
    assert owner is not None, f"{name} is {path}, which no installed package owns (asked dpkg -S about {asked})"
    listed = programs.PROGRAMS[name].package
    assert owner == listed, f"{name} ({path}) comes from {owner}, but flexvm.programs lists {listed}"
    assert owner in INSTALLED_BY_SETUP, f"{name} ({path}) comes from {owner}, which scripts/setup.sh does not install"


def test_a_missing_program_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(programs.PROGRAMS, "dnsmasq", programs.Program("dnsmasq-base", "", str(tmp_path)))
    with pytest.raises(programs.ProgramMissing) as caught:
        programs.find("dnsmasq")
    assert caught.value.details == {"missing": {"dnsmasq": "dnsmasq-base"}}
    assert "apt-get install dnsmasq-base" in caught.value.message
    assert caught.value.status == 503 and isinstance(caught.value, FlexvmError)


def test_an_unlisted_program_cannot_be_run() -> None:
    with pytest.raises(FlexvmError, match="not in flexvm.programs.PROGRAMS"):
        programs.find("nc")
    with pytest.raises(FlexvmError, match="not in flexvm.programs.PROGRAMS"):
        programs.command(["nsenter", "--net=/run/netns/x", "--", "nc", "-l"])


def test_a_wrapped_command_is_found_too() -> None:
    argv = programs.command(["nsenter", "--net=/run/netns/x", "--", "ip", "link"])
    assert argv == [programs.find("nsenter"), "--net=/run/netns/x", "--", programs.find("ip"), "link"]
    assert os.path.isabs(argv[0]) and os.path.isabs(argv[3])


def test_path_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "haproxy"
    mine.write_text("#!/bin/sh\n")
    mine.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert programs.find("haproxy") == str(mine)
    monkeypatch.setenv("PATH", "")
    assert programs.find("ip") in ("/usr/sbin/ip", "/sbin/ip")  # sbin is always searched


# --------------------------------------------------------------------------- the source


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _callee(call: ast.Call) -> tuple[str | None, str | None]:
    """(module or object name, function name) of ``a.b(...)`` or ``b(...)``."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return (func.value.id if isinstance(func.value, ast.Name) else None), func.attr
    return None, func.id if isinstance(func, ast.Name) else None


def _programs_of(elements: list[ast.expr]) -> set[str]:
    """The programs of a command list: its first element, or the first word after leading
    ``*prefix`` parts (``[*inside, "mount", …]`` runs mount inside a host), and the word after
    each literal ``--`` (``["unshare", …, "--", "true"]`` runs true)."""
    found = set()
    first = next((e for e in elements if not isinstance(e, ast.Starred)), None)
    words = [_text(e) for e in elements]
    candidates = [_text(first)] if first is not None else []
    candidates += [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--"]
    for word in candidates:
        if word is not None and PROGRAM_NAME.match(word):
            found.add(word)
    return found


def scan(path: Path, *, lab: bool) -> tuple[set[str], list[str]]:
    """Program names ``path`` runs, and the ways it runs programs other than through the list."""
    names: set[str] = set()
    bypasses: list[str] = []
    where = path.relative_to(ROOT) if ROOT in path.parents else path
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            owner, name = _callee(node)
            argv = node.args[0] if node.args and isinstance(node.args[0], ast.List | ast.Tuple) else None
            words = _programs_of(argv.elts) if argv is not None else set()
            if owner in ("subprocess", "asyncio", "pty") and name in SPAWNERS and words:
                names.update(words)
                bypasses.append(f"{where}:{node.lineno}: runs {sorted(words)} by name, not through flexvm.programs")
            if owner == "os" and name is not None and (name in SHELLS or name.startswith(("exec", "spawn"))):
                bypasses.append(f"{where}:{node.lineno}: os.{name} (flexvm runs programs through subprocess)")
            if owner == "asyncio" and name in SHELLS:
                bypasses.append(f"{where}:{node.lineno}: a shell")
            if any(k.arg == "shell" for k in node.keywords):
                bypasses.append(f"{where}:{node.lineno}: shell=")
            if name == "which":
                bypasses.append(f"{where}:{node.lineno}: shutil.which (find programs with programs.find)")
                names.update(w for w in map(_text, node.args[:1]) if w)
            if owner in (None, "programs", "system") and name in RUNNERS:
                names.update(words)
            if owner == "programs" and name == "find" and node.args and _text(node.args[0]):
                names.add(str(_text(node.args[0])))
        # The lab builds its commands as lists before running them: ("virtlogd", "--daemon", …),
        # ["ip", "-n", ns], [*inside, "hostname", name].
        if lab and isinstance(node, ast.List | ast.Tuple) and node.elts:
            starred = isinstance(node.elts[0], ast.Starred)
            options = any((_text(e) or "").startswith("-") for e in node.elts[1:])
            if starred or options:
                names.update(_programs_of(node.elts))
    return names, bypasses


def scan_tree(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """{program: [files running it]} and every bypass, for all Python files under ``root``."""
    found: dict[str, list[str]] = {}
    bypasses: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if path in (SRC / "programs.py", Path(__file__)):
            continue  # the one place that looks programs up; this file's samples are unlisted on purpose
        names, ways = scan(path, lab=SRC / "lab" in path.parents)
        for name in names:
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
        bypasses += ways
    return found, bypasses


def test_the_source_runs_only_listed_programs_and_only_through_the_list() -> None:
    found, bypasses = scan_tree(SRC)
    unlisted = {name: files for name, files in found.items() if name not in programs.PROGRAMS}
    assert not unlisted, f"programs run but not in flexvm.programs.PROGRAMS: {unlisted}"
    assert not bypasses, "programs run without flexvm.programs:\n" + "\n".join(bypasses)
    # The scan sees what the lab, the images and the load balancer run.
    assert {"ip", "nsenter", "unshare", "mount", "umount", "mkdir", "hostname", "true"} <= set(found)
    assert {"dnsmasq", "libvirtd", "virtlogd", "qemu-img"} <= set(found)


def test_every_module_that_starts_a_process_finds_it_through_programs() -> None:
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if re.search(r"\bsubprocess\.(run|Popen|call|check_call|check_output)\(", text):
            assert re.search(r"\bprograms\.(find|command)\(", text), (
                f"{path.relative_to(ROOT)} starts processes but never finds a program through flexvm.programs"
            )


def test_the_tests_run_only_listed_programs() -> None:
    found, _ = scan_tree(ROOT / "tests")  # tests may run programs by name; they must be listed
    unlisted = {name: files for name, files in found.items() if name not in programs.PROGRAMS}
    assert not unlisted, f"the tests run programs not in flexvm.programs.PROGRAMS: {unlisted}"


def test_the_scan_finds_what_it_is_for(tmp_path: Path) -> None:
    # The scan itself can fail: each way of running a program it must catch, in a lab-like file.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, shutil, subprocess\n"
        "subprocess.run(['socat', 'x'])\n"
        "shutil.which('brctl')\n"
        "ARGV = ('rdisc', '--daemon')\n"
        "run([*inside, 'ethtool', 'lo'])\n"
        "system.run(['unshare', '--uts=f', '--', 'arping'])\n"
        "os.system('reboot')\n"
        "subprocess.run(argv, shell=True)\n"
    )
    names, bypasses = scan(sample, lab=True)
    assert names == {"socat", "brctl", "rdisc", "ethtool", "unshare", "arping"}
    assert len(bypasses) == 4, bypasses  # subprocess by name, shutil.which, os.system, shell=
