"""The one naming rule for everything a user names: VMs, images, sizes, hosts.

Letters, digits and hyphens, 1-64 characters, starting with a letter. Names end up in
domain XML, file names, kernel command lines and shell-visible places, so the rule is
strict on purpose: nothing XML-, path- or shell-significant can get through.
"""

from __future__ import annotations

import re

from flexvm.errors import InvalidInput

NAME_RULE = "letters, digits and hyphens, 1-64 characters, starting with a letter"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")
# Sizes follow Azure's spelling (Standard_B1s), which needs underscores.
_SIZE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def check_name(field: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(field, f"{name!r} is not a valid name: use {NAME_RULE}")
    return name


def check_size_name(field: str, name: str) -> str:
    if not isinstance(name, str) or not _SIZE_NAME.fullmatch(name):
        raise InvalidInput(
            field,
            f"{name!r} is not a valid size name: use letters, digits, '_' and '-', "
            "1-64 characters, starting with a letter",
        )
    return name
