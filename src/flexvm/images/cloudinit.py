"""The NoCloud seed: a small ISO9660 disk labelled ``cidata`` that cloud-init reads at boot.

It holds ``meta-data`` (who the instance is) and ``user-data`` (what to do). The YAML is
written by hand rather than with a YAML library: the two documents are tiny and fixed in
shape, and every value goes through ``_yaml_string``, which emits a double-quoted scalar
with everything outside printable ASCII escaped, so no value can break out of its line.

ISO9660 itself only allows upper-case 8.3 names; the Rock Ridge and Joliet extensions
carry the real names (``meta-data``, ``user-data``) that Linux's iso9660 driver shows.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import pycdlib

from flexvm.errors import ImageError, InvalidInput

VOLUME_LABEL = "cidata"  # what cloud-init's NoCloud datasource looks for
MAX_USER_DATA = 64 * 1024  # bytes of UTF-8; Azure's custom data has the same ceiling

# Real name -> plain ISO9660 name, which is what a reader without the extensions sees.
_FILES = {"meta-data": "/METADATA.;1", "user-data": "/USERDATA.;1"}

# cloud-init makes /var/lib/cloud/instances/<instance-id>: no slashes, no spaces.
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAX_HOSTNAME = 253
_MAX_SSH_KEY = 16 * 1024
# The key types OpenSSH accepts in authorized_keys; one must appear (options may precede it).
_SSH_KEY_TYPE = re.compile(
    r"(^|\s)(ssh-(rsa|dss|ed25519)|ecdsa-sha2-\S+|sk-\S+@openssh\.com)(-cert-v01@openssh\.com)?\s"
)
# Text a user may send as user data: printable characters plus tab, newline and CR.
_USER_DATA_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def build_nocloud_seed(
    path: Path,
    *,
    instance_id: str,
    hostname: str,
    user_data: str | None,
    ssh_keys: list[str],
) -> None:
    """Write the seed ISO to ``path`` (replacing it atomically if it exists).

    Without ``user_data`` the seed carries a ``#cloud-config`` that sets the hostname and
    the SSH keys. With it, the user data goes in verbatim and the keys move to meta-data's
    ``public-keys``, which cloud-init also installs: custom data never costs the user the
    keys they asked for.
    """
    _check_instance_id(instance_id)
    _check_hostname(hostname)
    keys = [_check_ssh_key(index, key) for index, key in enumerate(ssh_keys)]
    if user_data is None:
        meta_data = render_meta_data(instance_id, hostname, [])
        user_text = render_cloud_config(hostname, keys)
    else:
        meta_data = render_meta_data(instance_id, hostname, keys)
        user_text = _check_user_data(user_data)
    _write_iso(Path(path), {"meta-data": meta_data.encode(), "user-data": user_text.encode()})


def render_meta_data(instance_id: str, hostname: str, ssh_keys: list[str]) -> str:
    lines = [f"instance-id: {_yaml_string(instance_id)}", f"local-hostname: {_yaml_string(hostname)}"]
    if ssh_keys:
        lines.append("public-keys:")
        lines += [f"  - {_yaml_string(key)}" for key in ssh_keys]
    return "\n".join(lines) + "\n"


def render_cloud_config(hostname: str, ssh_keys: list[str]) -> str:
    lines = ["#cloud-config", f"hostname: {_yaml_string(hostname)}"]
    if ssh_keys:
        lines.append("ssh_authorized_keys:")
        lines += [f"  - {_yaml_string(key)}" for key in ssh_keys]
    return "\n".join(lines) + "\n"


def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar that means exactly ``value`` to any YAML 1.1/1.2 parser."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _check_instance_id(instance_id: str) -> None:
    if not isinstance(instance_id, str) or not _INSTANCE_ID.match(instance_id):
        raise InvalidInput(
            "instance_id",
            f"{instance_id!r} is not valid: use 1-128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit",
        )


def _check_hostname(hostname: str) -> None:
    if (
        not isinstance(hostname, str)
        or not hostname
        or len(hostname) > _MAX_HOSTNAME
        or not all(_HOST_LABEL.match(label) for label in hostname.split("."))
    ):
        raise InvalidInput(
            "hostname",
            f"{hostname!r} is not a valid host name: dot-separated labels of letters, digits and hyphens",
        )


def _check_ssh_key(index: int, key: str) -> str:
    field = f"ssh_keys[{index}]"
    if not isinstance(key, str):
        raise InvalidInput(field, "must be text")
    key = key.strip()
    if not key or len(key) > _MAX_SSH_KEY:
        raise InvalidInput(field, f"must be one public key line of 1-{_MAX_SSH_KEY} characters")
    if not key.isprintable():
        raise InvalidInput(field, "must be a single line of printable characters")
    if not _SSH_KEY_TYPE.search(key + " "):
        raise InvalidInput(field, "does not look like an OpenSSH public key (e.g. 'ssh-ed25519 AAAA... you@host')")
    return key


def _check_user_data(user_data: str) -> str:
    if not isinstance(user_data, str):
        raise InvalidInput("user_data", "must be text, not binary data")
    try:
        size = len(user_data.encode("utf-8"))
    except UnicodeEncodeError as err:
        raise InvalidInput("user_data", "is not valid Unicode text") from err
    if size > MAX_USER_DATA:
        raise InvalidInput("user_data", f"is {size} bytes; at most {MAX_USER_DATA} bytes are allowed")
    if _USER_DATA_CONTROL.search(user_data):
        raise InvalidInput("user_data", "contains control characters: it must be text, not binary data")
    return user_data


def _write_iso(path: Path, files: dict[str, bytes]) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, data in files.items():
            iso.add_fp(io.BytesIO(data), len(data), _FILES[name], rr_name=name, joliet_path=f"/{name}")
        # Written under a temporary name beside the target, then renamed: a reader (or a
        # VM being defined) never sees half a seed, and a failure leaves none.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                iso.write_fp(out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp_name, 0o644)  # QEMU, possibly another user, reads it
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    except (OSError, pycdlib.pycdlibexception.PyCdlibException) as err:
        raise ImageError(f"cannot write the cloud-init seed {path}: {err}") from err
    finally:
        iso.close()
