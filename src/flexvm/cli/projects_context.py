"""The project the CLI works in: one at a time, as `az` works in a subscription.

In order: ``--project P`` anywhere on a resource command's line, ``FLEXVM_PROJECT``, the default
that ``flexvm project use P`` saved (``~/.config/flexvm/project``, or under ``FLEXVM_CONFIG_DIR``),
then ``default``.

``--project`` is taken off the command line before Typer parses it, so every resource command
(vm, scaleset, image, availability-set, operation, …) accepts it without each declaring it. The
commands whose ``--project`` means something of their own (role, audit, token) declare it.
"""

from __future__ import annotations

import os
from pathlib import Path

from flexvm.errors import InvalidInput
from flexvm.model.projects import DEFAULT_PROJECT, check_project

OWN_OPTION = {"role", "audit", "token", "project"}  # commands that declare --project themselves
_chosen: str | None = None


def config_dir() -> Path:
    if os.environ.get("FLEXVM_CONFIG_DIR"):
        return Path(os.environ["FLEXVM_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flexvm"


def saved_default() -> Path:
    return config_dir() / "project"


def take_project_option(argv: list[str]) -> list[str]:
    """``argv`` without its ``--project P`` (remembered for ``current``), unless the command
    declares the option itself."""
    global _chosen
    _chosen = None
    if not argv or argv[0] in OWN_OPTION:
        return argv
    kept: list[str] = []
    items = iter(argv)
    for item in items:
        if item == "--":
            kept.append(item)
            kept.extend(items)
            break
        if item == "--project":
            value = next(items, None)
            if value is None:
                raise InvalidInput("project", "--project needs a project name")
            _chosen = check_project("project", value)
        elif item.startswith("--project="):
            _chosen = check_project("project", item.split("=", 1)[1])
        else:
            kept.append(item)
    return kept


def current() -> str:
    if _chosen:
        return _chosen
    if os.environ.get("FLEXVM_PROJECT"):
        return check_project("FLEXVM_PROJECT", os.environ["FLEXVM_PROJECT"])
    try:
        saved = saved_default().read_text().strip()
    except OSError:
        saved = ""
    return check_project("project", saved) if saved else DEFAULT_PROJECT


def use(project: str) -> Path:
    path = saved_default()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(check_project("project", project) + "\n")
    return path
