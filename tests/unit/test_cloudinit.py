"""The NoCloud seed ISO, read back the way a guest would see it."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pycdlib
import pytest

from flexvm.errors import ImageError, InvalidInput
from flexvm.images import cloudinit
from flexvm.images.cloudinit import build_nocloud_seed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxJ0gYk0Rz5bq1mX9lC0l8QXQmO4uQ2wJ1o7cVnXb3a alice@laptop"
RSA_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 bob"


def read_seed(path: Path) -> tuple[str, dict[str, str], dict[str, str]]:
    """The volume label and the files by their Rock Ridge and by their Joliet names."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        by_rr: dict[str, str] = {}
        by_joliet: dict[str, str] = {}
        for name in ("meta-data", "user-data"):
            for table, kwargs in ((by_rr, {"rr_path": f"/{name}"}), (by_joliet, {"joliet_path": f"/{name}"})):
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, **kwargs)
                table[name] = out.getvalue().decode()
        return label, by_rr, by_joliet
    finally:
        iso.close()


def test_seed_has_label_cidata_and_both_files(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    build_nocloud_seed(seed, instance_id="vm1-0001", hostname="vm1", user_data=None, ssh_keys=[KEY])
    label, by_rr, by_joliet = read_seed(seed)
    assert label == "cidata"
    assert by_rr == by_joliet
    assert by_rr["meta-data"] == 'instance-id: "vm1-0001"\nlocal-hostname: "vm1"\n'
    assert by_rr["user-data"] == f'#cloud-config\nhostname: "vm1"\nssh_authorized_keys:\n  - "{KEY}"\n'
    assert seed.stat().st_mode & 0o777 == 0o644


def test_given_user_data_goes_in_verbatim_and_keys_move_to_meta_data(tmp_path: Path) -> None:
    user_data = "#!/bin/sh\necho 'héllo' > /tmp/x\r\n\tdone\n"
    seed = tmp_path / "seed.iso"
    build_nocloud_seed(seed, instance_id="i-1", hostname="web-1", user_data=user_data, ssh_keys=[KEY, RSA_KEY])
    _, files, _ = read_seed(seed)
    assert files["user-data"] == user_data
    assert files["meta-data"] == (
        f'instance-id: "i-1"\nlocal-hostname: "web-1"\npublic-keys:\n  - "{KEY}"\n  - "{RSA_KEY}"\n'
    )


def test_no_keys_means_no_key_list(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    build_nocloud_seed(seed, instance_id="i-1", hostname="h", user_data=None, ssh_keys=[])
    _, files, _ = read_seed(seed)
    assert files["user-data"] == '#cloud-config\nhostname: "h"\n'


def test_blkid_sees_the_label(tmp_path: Path) -> None:
    # cloud-init finds the seed by filesystem label, through blkid.
    if shutil.which("blkid") is None:
        pytest.skip("blkid not installed")
    seed = tmp_path / "seed.iso"
    build_nocloud_seed(seed, instance_id="i-1", hostname="h", user_data=None, ssh_keys=[])
    probed = subprocess.run(
        ["blkid", "-p", "-o", "export", str(seed)], capture_output=True, text=True, check=False
    ).stdout
    assert "TYPE=iso9660" in probed
    assert "LABEL=cidata" in probed


def test_an_existing_seed_is_replaced_and_no_temporary_is_left(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    seed.write_bytes(b"old")
    build_nocloud_seed(seed, instance_id="i-2", hostname="h", user_data=None, ssh_keys=[])
    assert read_seed(seed)[1]["meta-data"].startswith('instance-id: "i-2"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_a_seed_that_cannot_be_written_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cloud-init seed"):
        build_nocloud_seed(tmp_path / "no-dir" / "seed.iso", instance_id="i", hostname="h", user_data=None, ssh_keys=[])


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write(self: pycdlib.PyCdlib, fp: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pycdlib.PyCdlib, "write_fp", broken_write)
    with pytest.raises(ImageError, match="No space left"):
        build_nocloud_seed(tmp_path / "seed.iso", instance_id="i", hostname="h", user_data=None, ssh_keys=[])
    assert list(tmp_path.iterdir()) == []


# -- what is refused ----------------------------------------------------------------------


def build(**overrides: object) -> None:
    args: dict[str, object] = {"instance_id": "i-1", "hostname": "h", "user_data": None, "ssh_keys": []}
    args.update(overrides)
    build_nocloud_seed(Path("/nonexistent/never-written.iso"), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("user_data", [b"#cloud-config\n", "a\x00b", "\x1b[31mred", "x" * (64 * 1024 + 1), "\ud800"])
def test_user_data_that_is_not_small_text_is_refused(user_data: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        build(user_data=user_data)
    assert caught.value.field == "user_data"


def test_user_data_at_the_limit_is_accepted(tmp_path: Path) -> None:
    user_data = "#" * (64 * 1024)
    build_nocloud_seed(tmp_path / "s.iso", instance_id="i", hostname="h", user_data=user_data, ssh_keys=[])
    assert read_seed(tmp_path / "s.iso")[1]["user-data"] == user_data


def test_user_data_limit_counts_bytes_not_characters() -> None:
    with pytest.raises(InvalidInput, match="bytes"):
        build(user_data="é" * (32 * 1024 + 1))


@pytest.mark.parametrize("hostname", ["", "a b", "-x", "x-", "a..b", "x" * 64, "h\nx", "ünï", "$(id)"])
def test_bad_hostnames(hostname: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build(hostname=hostname)
    assert caught.value.field == "hostname"


@pytest.mark.parametrize("instance_id", ["", "../etc", "a/b", "a b", "x" * 129, 'i"\n'])
def test_bad_instance_ids(instance_id: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build(instance_id=instance_id)
    assert caught.value.field == "instance_id"


@pytest.mark.parametrize("key", ["", "not a key", f"{KEY}\nssh-rsa AAAA evil", "AAAAC3NzaC1lZDI1NTE5"])
def test_bad_ssh_keys(key: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build(ssh_keys=[KEY, key])
    assert caught.value.field == "ssh_keys[1]"


def test_keys_with_options_and_certificates_are_accepted(tmp_path: Path) -> None:
    keys = [
        'from="10.0.0.1" ssh-ed25519 AAAAC3Nz x',
        "ssh-rsa-cert-v01@openssh.com AAAA y",
        "ecdsa-sha2-nistp256 AAAA z",
        "sk-ssh-ed25519@openssh.com AAAA w",
    ]
    build_nocloud_seed(tmp_path / "s.iso", instance_id="i", hostname="h", user_data=None, ssh_keys=keys)


# -- the hand-written YAML ----------------------------------------------------------------


def test_yaml_strings_escape_what_could_break_out() -> None:
    assert cloudinit._yaml_string('a"b\\c') == '"a\\"b\\\\c"'
    assert cloudinit._yaml_string("x\ny") == '"x\\x0ay"'
    assert cloudinit._yaml_string("é€😀") == '"\\xe9\\u20ac\\U0001f600"'
    assert cloudinit._yaml_string("#: - {}") == '"#: - {}"'


TRICKY = ['a"b', "c\\d", "new\nline", "é€😀", "#: - [x] {y} &a *b !c |", "'single'", "", " pad ", "yes", "0x10"]


def python_with_pyyaml() -> str | None:
    for python in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if python and subprocess.run([python, "-c", "import yaml"], capture_output=True, check=False).returncode == 0:
            return python
    return None


def test_yaml_strings_round_trip_through_pyyaml() -> None:
    # cloud-init parses with PyYAML; use it where a Python that has it is at hand.
    python = python_with_pyyaml()
    if python is None:
        pytest.skip("no Python with PyYAML to parse with")
    document = "\n".join(f"- {cloudinit._yaml_string(value)}" for value in TRICKY)
    parsed = subprocess.run(
        [python, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))"],
        input=document,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(parsed.stdout) == TRICKY
