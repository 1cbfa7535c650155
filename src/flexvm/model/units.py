"""Human sizes ("512M", "2G", "1.5T") to bytes and back; binary units throughout."""

from __future__ import annotations

import re

from flexvm.errors import InvalidInput

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4

_UNITS = {"": 1, "B": 1, "K": KIB, "M": MIB, "G": GIB, "T": TIB}
# number, optional unit letter, optional "B"/"iB"; a bare "B" means bytes whatever the default.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:I?B)?|(B))?\s*", re.IGNORECASE)


def parse_bytes(text: str | int, field: str, *, default_unit: str = "") -> int:
    """Parse '512M', '2G', '2GiB', '1.5G' or a plain integer into bytes.

    A bare number is read in ``default_unit`` (bytes unless told otherwise), so that
    ``--memory 512`` can mean MiB where that is the convention.
    """
    if isinstance(text, int):
        return text * _UNITS[default_unit.upper()]
    match = _SIZE.fullmatch(text)
    if not match:
        raise InvalidInput(field, f"'{text}' is not a size; use a number with K, M, G or T (e.g. 512M, 2G)")
    number, unit, plain_bytes = match.groups()
    unit = "B" if plain_bytes else (unit or default_unit).upper()
    value = float(number) * _UNITS[unit]
    if value != int(value):
        raise InvalidInput(field, f"'{text}' is not a whole number of bytes")
    return int(value)


def parse_mib(text: str | int, field: str) -> int:
    """Memory as people write it ('512M', '2G'; a bare number is MiB) -> whole MiB, the unit
    sizes, hosts and guests count memory in."""
    value = parse_bytes(text, field, default_unit="M")
    if value % MIB:
        raise InvalidInput(field, f"'{text}' is not a whole number of MiB")
    return value // MIB


def format_bytes(value: int) -> str:
    """Short binary form: 536870912 -> '512M', 1610612736 -> '1.5G', 264212000000 -> '246.1G'."""
    for suffix, unit in (("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)):
        if abs(value) >= unit:
            shown = value / unit
            return f"{shown:.0f}{suffix}" if shown == int(shown) else f"{shown:.1f}{suffix}"
    return f"{value}B"
