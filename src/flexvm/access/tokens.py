"""Token secrets: made, shown once, kept only as a hash.

A token reads ``flexvm_<id>_<secret>``. The id finds its row; the secret's SHA-256 is compared in
constant time. A plain hash suffices (no bcrypt or scrypt): the secret is 256 random bits, not a
password a person chose, so there is nothing for a slow hash to protect against, and every request
pays for the check.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "flexvm"
_TOKEN = re.compile(rf"{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")


def new_token() -> tuple[str, str, str]:
    """(id, the whole token to show once, the hash to keep)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{PREFIX}_{token_id}_{secret}", digest(secret)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def matches(secret: str, kept_digest: str) -> bool:
    return secrets.compare_digest(digest(secret), kept_digest)
