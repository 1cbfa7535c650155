"""Projects name things: a resource's key is its project and its name.

Every VM, scale set, availability set and private image belongs to one project, and names are
unique within it. Below the edges a resource is known by its *key*: the name itself in the
``default`` project, ``project.name`` in any other. The key is what libvirt, the disk files, the
load balancer and the metrics see, so two projects' ``web1`` can never clash (``team-a.web1`` and
``team-b.web1``) and ``virsh list`` still says whose each guest is. The dot cannot occur in a name
(see ``names.py``), so a key splits back into its project and name without ambiguity, and the data
of a flexvm from before projects is already the ``default`` project's, untouched.

A key fits the 64 characters of a name column: project names are kept short (24), and a name in a
project other than ``default`` may use what the project's name leaves.
"""

from __future__ import annotations

import re

from flexvm.errors import InvalidInput

DEFAULT_PROJECT = "default"
SEPARATOR = "."
KEY_LENGTH = 64
PROJECT_RULE = "lowercase letters, digits and hyphens, 1-24 characters, starting with a letter"
_PROJECT = re.compile(r"[a-z][a-z0-9-]{0,23}")


def check_project(field: str, name: str) -> str:
    if not isinstance(name, str) or not _PROJECT.fullmatch(name):
        raise InvalidInput(field, f"{name!r} is not a valid project name: use {PROJECT_RULE}")
    return name


def key_of(project: str, name: str, field: str = "name") -> str:
    """The key of ``name`` in ``project`` (both already checked by their rules)."""
    if project == DEFAULT_PROJECT:
        return name
    key = f"{project}{SEPARATOR}{name}"
    if len(key) > KEY_LENGTH:
        room = KEY_LENGTH - len(project) - len(SEPARATOR)
        raise InvalidInput(
            field, f"{name!r} is too long for project {project!r}: names there take at most {room} characters"
        )
    return key


def split_key(key: str) -> tuple[str, str]:
    """(project, name) of a key."""
    project, separator, name = key.partition(SEPARATOR)
    return (project, name) if separator else (DEFAULT_PROJECT, key)


def project_of(key: str) -> str:
    return split_key(key)[0]


def name_of(key: str) -> str:
    return split_key(key)[1]


def check_key(field: str, key: str) -> str:
    """A key passes if its project and name each pass their rule (services take keys, not names)."""
    from flexvm.model.names import check_name

    if not isinstance(key, str):
        raise InvalidInput(field, f"{key!r} is not a valid name")
    project, name = split_key(key)
    if project != DEFAULT_PROJECT or SEPARATOR in key:
        check_project(field, project)
    check_name(field, name)
    if len(key) > KEY_LENGTH:
        raise InvalidInput(field, f"{name!r} is too long for project {project!r}")
    return key


PROJECT_TARGETS = ("vm", "scaleset", "availability_set")  # operation targets named by keys


def project_of_target(target_kind: str, target_name: str) -> str | None:
    """The project an operation belongs to, from what it acts on; None for platform work (hosts,
    the pool, public images)."""
    if target_kind in PROJECT_TARGETS:
        return project_of(target_name)
    if target_kind == "image":
        return image_project(target_name)
    return None


def image_key(project: str | None, name: str) -> str:
    """Images are public (the bare name) or private to a project (``project.name``, for the
    ``default`` project too: a bare name is always a public image)."""
    return name if project is None else f"{project}{SEPARATOR}{name}"


def image_project(key: str) -> str | None:
    project, separator, _ = key.partition(SEPARATOR)
    return project if separator else None
