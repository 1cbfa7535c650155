"""The people of the permission tests (one user per role on project ``team-a``, and the callers
around them) and a fingerprint of everything a request could change, to compare before and after."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from flexvm.access.people import People
from flexvm.model.access import Role
from flexvm.platform import Platform
from tests.conftest import TOKEN

PROJECT = "team-a"
OTHER_PROJECT = "team-b"


@dataclass(frozen=True)
class Principal:
    """One caller of the matrix: who it is and what it holds, written out by hand (not computed
    by the access layer under test)."""

    name: str
    rank: int = 0  # its role on PROJECT: 0 none, 1 Reader, 2 VM Operator, 3 Contributor, 4 Owner
    admin: bool = False  # the platform Owner
    platform_role: bool = False  # holds any role on the platform
    rights: bool = True  # holds any role anywhere
    token: bool = True  # sends a valid token at all


ADMIN = Principal("admin", rank=4, admin=True, platform_role=True)
OWNER = Principal("owner", rank=4)
CONTRIBUTOR = Principal("contributor", rank=3)
OPERATOR = Principal("operator", rank=2)
READER = Principal("reader", rank=1)
OTHER_OWNER = Principal("other-owner")  # Owner of team-b only
PLATFORM_READER = Principal("platform-reader", rank=1, platform_role=True)  # Reader on the platform
NOBODY = Principal("nobody", rights=False)  # a user with a token and no role anywhere
NO_TOKEN = Principal("no-token", rights=False, token=False)

# The admin last: of all callers it is the one that could change the most.
PRINCIPALS = (NO_TOKEN, NOBODY, OTHER_OWNER, READER, OPERATOR, CONTRIBUTOR, OWNER, PLATFORM_READER, ADMIN)

# (principal, role, project or None for the platform) as granted to each principal's user.
GRANTS: dict[Principal, tuple[Role, str | None]] = {
    OWNER: (Role.OWNER, PROJECT),
    CONTRIBUTOR: (Role.CONTRIBUTOR, PROJECT),
    OPERATOR: (Role.VM_OPERATOR, PROJECT),
    READER: (Role.READER, PROJECT),
    OTHER_OWNER: (Role.OWNER, OTHER_PROJECT),
    PLATFORM_READER: (Role.READER, None),
}


def make_people(platform: Platform) -> dict[Principal, str | None]:
    """Projects team-a and team-b, a user for each principal with its role, and each one's
    bearer token (the admin's is the bootstrap token; NO_TOKEN has none)."""
    platform.projects.create(PROJECT)
    platform.projects.create(OTHER_PROJECT)
    people = People(platform.db, TOKEN)
    tokens: dict[Principal, str | None] = {ADMIN: TOKEN, NO_TOKEN: None}
    for principal in PRINCIPALS:
        if principal in tokens:
            continue
        people.create_user(principal.name)
        if principal in GRANTS:
            role, project = GRANTS[principal]
            people.assign(principal.name, role, project)
        tokens[principal] = people.create_token(principal.name)[1]
    return tokens


def headers_of(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


# Fields that move without anyone asking: when a token was last used, a host last answered.
VOLATILE = {"last_used_at", "last_seen", "heartbeat", "fits_now"}


def _stable(items: list[Any]) -> list[Any]:
    rows = []
    for item in items:
        row = dataclasses.asdict(item) if dataclasses.is_dataclass(item) and not isinstance(item, type) else item
        if isinstance(row, dict):
            row = {k: v for k, v in row.items() if k not in VOLATILE}
        rows.append(json.loads(json.dumps(row, default=str, sort_keys=True)))
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def fingerprint(platform: Platform) -> dict[str, list[Any]]:
    """Everything an API request could change, except the audit trail (which records refusals
    too): VMs, projects and their quotas, users, tokens, role assignments, images, hosts, sizes,
    networks, availability sets, scale sets, operations, and the fake hosts' guests."""
    people = People(platform.db, TOKEN)
    return {
        "vms": _stable(platform.vms.list()),
        "projects": _stable(platform.projects.list()),
        "users": _stable(people.users()),
        "tokens": _stable(people.tokens()),
        "roles": _stable(people.assignments()),
        "images": _stable(platform.images.list()),
        "hosts": _stable(platform.hosts.list()),
        "sizes": _stable([fit.size for fit in platform.sizes.list_with_fit()]),
        "networks": _stable(platform.networks.list()),
        "availability_sets": _stable(platform.availability_sets.list()),
        "scale_sets": _stable(platform.scale_sets.list()),
        "operations": _stable(platform.runner.list(limit=1000, with_platform=True)),
        "guests": _stable(
            [
                (host.name, guest.name)
                for host in platform.hosts.list()
                for guest in platform.drivers.for_uri(host.uri).list_guests()
            ]
        ),
    }


def changed(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> dict[str, Any]:
    """What differs, by kind: empty when nothing changed."""
    return {
        kind: {
            "gone": [r for r in before[kind] if r not in after[kind]],
            "new": [r for r in after[kind] if r not in before[kind]],
        }
        for kind in before
        if before[kind] != after[kind]
    }
