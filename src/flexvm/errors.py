"""The one exception tree of flexvm.

Every error the platform raises on purpose is a ``FlexvmError``. Each class carries the
HTTP status the API answers with and a short machine code (Azure's ``error.code``)::

    FlexvmError (500)
    ├── InvalidInput (400)            bad input: names the field and the rule
    │   └── TooLarge (413)            a request body over its limit (names the limit)
    ├── NotFound (404)                a named thing does not exist
    ├── Conflict (409)                the request clashes with what exists
    │   ├── AlreadyExists (409)       a name is taken
    │   ├── Busy (409)                another operation holds the resource
    │   ├── InvalidState (409)        the resource is in the wrong state for this
    │   │   └── InvalidTransition (409)   a state machine refused a change (names both states)
    │   ├── LeaseLost (409)           another server holds the operation or the leader role now
    │   └── QuotaExceeded (409)       a project's quota would be exceeded (names it, the ask, use, limit)
    ├── CapacityError (409)           no host can hold it (details name each host's reason)
    ├── Unauthorized (401)            a missing, malformed, wrong, expired or revoked token: one answer
    ├── Forbidden (403)               the caller may see it but lacks the role to do this (names the role)
    ├── ImageError (422)              an image file is corrupt, truncated or unusable
    ├── HypervisorError (502)         libvirt/QEMU refused or failed
    │   └── HypervisorUnavailable (503)   libvirtd cannot be reached
    ├── FenceFailed (502)             a fence agent could not power a host off, or not confirm it is off
    ├── LoadBalancerError (502)       HAProxy refused a configuration, or did not start/reload/answer
    ├── LabCommandError (500)         a system command the lab ran failed (its output in the message)
    ├── OperationFailed (500)         a long-running operation ended in failure
    │   ├── OperationTimeout (504)    it ran out of time (e.g. a guest never became ready)
    │   ├── OperationCanceled (409)   someone canceled it; what it had done was undone
    │   └── WorkflowDiverged (500)    a resumed operation took another path than its recorded steps
    ├── DatabaseUnavailable (503)     the database cannot be reached, or did not answer in time
    ├── SchemaTooNew (500)            the database was migrated by a newer flexvm than this one
    ├── ProgramMissing (503)          a program flexvm runs is not installed (names its Debian package)
    └── ServerUnavailable (503)       the CLI cannot reach the flexvm server

Library code raises these and chains the cause (``raise X(...) from err``); only the edges
(API, CLI) turn them into responses or messages.

A refusal that something else would let through carries a ``Remedy`` in ``details["remedy"]``,
in the domain's words: an option of the same request (``{"option": "allow_restart"}``) or an
action to take first (``{"action": "add_host"}``). Messages say what was refused and why, never
how to type the remedy: the CLI words it as a flag or a command, the API as a request field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class Option(StrEnum):
    """Options of a request that let it do what it refuses to do by default."""

    ALLOW_RESTART = "allow_restart"  # a resize beyond the VM's ceilings stops and starts the guest
    FORCE = "force"  # a memory shrink may take memory the guest is using
    COLD = "cold"  # a move stops the guest, moves its files and starts it there


class Action(StrEnum):
    """Other requests that would let a refused one through, or show why something failed.

    The comment says what ``subject`` names for each.
    """

    ADD_HOST = "add_host"
    ADD_HOST_ON_NETWORK = "add_host_on_network"  # a host whose guests can be reached (not QEMU's NAT)
    BUILD_IMAGE = "build_image"  # image: the built-in recipe to build
    READ_CONSOLE = "read_console"  # vm
    ADD_SCALE_SET_INSTANCE = "add_scale_set_instance"  # scale_set
    CHANGE_AUTOSCALE_RANGE = "change_autoscale_range"  # scale_set


@dataclasses.dataclass(frozen=True)
class Remedy:
    """What would let a refused request through: an ``option`` of the same request, or an
    ``action`` to take first, on what ``subject`` names (``{"vm": "web1"}``)."""

    option: Option | None = None
    action: Action | None = None
    subject: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.option is None) == (self.action is None):
            raise TypeError("a remedy names either an option or an action")

    def to_dict(self) -> dict[str, Any]:
        """``{"option": "cold"}`` or ``{"action": "read_console", "vm": "web1"}``."""
        if self.option is not None:
            return {"option": self.option.value}
        assert self.action is not None  # __post_init__ saw to it
        return {"action": self.action.value, **self.subject}

    def worded(self, options: Mapping[Option, str], actions: Mapping[Action, str]) -> str:
        """This remedy in an edge's words: its template from ``options`` or ``actions``, filled in
        with the subject (``"see `flexvm vm console {vm}`"``)."""
        if self.option is not None:
            return options[self.option]
        assert self.action is not None
        return actions[self.action].format_map(_Placeholders(self.subject))

    @classmethod
    def from_dict(cls, raw: Any) -> Remedy | None:
        """Read back from an error's details (also across the API); None if absent or unknown to
        this version, so an older client still shows the message."""
        if not isinstance(raw, dict):
            return None
        options, actions = {o.value for o in Option}, {a.value for a in Action}
        if raw.get("option") in options:
            return cls(option=Option(raw["option"]))
        if raw.get("action") in actions:
            subject = {key: str(value) for key, value in raw.items() if key != "action"}
            return cls(action=Action(raw["action"]), subject=subject)
        return None


class _Placeholders(dict[str, str]):
    """A subject that lacks a name a template uses shows it as a placeholder (``SCALE_SET``)
    rather than failing while an error is being reported."""

    def __missing__(self, key: str) -> str:
        return key.upper()


class FlexvmError(Exception):
    status = 500
    code = "InternalError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, remedy: Remedy | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        if remedy is not None:
            # In details, so it reaches API clients and survives the CLI's round trip.
            self.details["remedy"] = remedy.to_dict()

    @property
    def remedy(self) -> Remedy | None:
        return Remedy.from_dict(self.details.get("remedy"))

    def to_dict(self) -> dict[str, Any]:
        """Azure's error shape: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidInput(FlexvmError):
    status = 400
    code = "InvalidInput"

    def __init__(
        self, field: str, message: str, *, details: dict[str, Any] | None = None, remedy: Remedy | None = None
    ) -> None:
        super().__init__(f"{field}: {message}", details={"field": field, **(details or {})}, remedy=remedy)
        self.field = field


class TooLarge(InvalidInput):
    """A request body bigger than the server takes (an uploaded image past ``upload_max_bytes``)."""

    status = 413
    code = "RequestBodyTooLarge"

    def __init__(self, field: str, size: int | None, limit: int) -> None:
        what = "goes past" if size is None else f"is {size} bytes, over"
        super().__init__(field, f"{what} the limit of {limit} bytes this server takes", details={"limit": limit})


class NotFound(FlexvmError):
    status = 404
    code = "NotFound"

    def __init__(self, kind: str, name: str, message: str | None = None) -> None:
        super().__init__(message or f"{kind} '{name}' not found", details={"kind": kind, "name": name})


class Conflict(FlexvmError):
    status = 409
    code = "Conflict"


class AlreadyExists(Conflict):
    code = "AlreadyExists"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} '{name}' already exists", details={"kind": kind, "name": name})


class Busy(Conflict):
    code = "OperationInProgress"

    def __init__(self, kind: str, name: str, operation_id: str) -> None:
        super().__init__(
            f"{kind} '{name}' is busy with operation {operation_id}; wait for it to finish",
            details={"kind": kind, "name": name, "operation_id": operation_id},
        )


class InvalidState(Conflict):
    code = "InvalidState"


class InvalidTransition(InvalidState):
    code = "InvalidTransition"


class LeaseLost(Conflict):
    code = "LeaseLost"


class QuotaExceeded(Conflict):
    code = "QuotaExceeded"

    def __init__(self, project: str, quota: str, asked: int, used: int, limit: int, unit: str = "") -> None:
        def shown(value: int) -> str:
            return f"{value} {unit}".strip()

        super().__init__(
            f"project '{project}' quota '{quota}' exceeded: asked for {shown(asked)}, "
            f"{shown(used)} used of a limit of {shown(limit)}",
            details={"project": project, "quota": quota, "asked": asked, "used": used, "limit": limit, "unit": unit},
        )


class CapacityError(FlexvmError):
    status = 409
    code = "InsufficientCapacity"


class Unauthorized(FlexvmError):
    status = 401
    code = "Unauthorized"

    def __init__(self, message: str, *, reason: str = "", token_id: str | None = None) -> None:
        super().__init__(message)
        # Which of missing, malformed, unknown, expired, revoked, disabled: for the audit trail
        # only, never for the answer (one answer for all, so a prober learns nothing).
        self.reason = reason
        self.token_id = token_id


class Forbidden(FlexvmError):
    status = 403
    code = "AuthorizationFailed"


class ImageError(FlexvmError):
    status = 422
    code = "InvalidImage"


class HypervisorError(FlexvmError):
    status = 502
    code = "HypervisorError"


class HypervisorUnavailable(HypervisorError):
    status = 503
    code = "HypervisorUnavailable"


class FenceFailed(FlexvmError):
    """A fence agent could not power a failed host off, or could not confirm that it is off."""

    status = 502
    code = "FenceFailed"


class LoadBalancerError(FlexvmError):
    """HAProxy refused a configuration, or did not start, reload or answer in time."""

    status = 502
    code = "LoadBalancerError"


class LabCommandError(FlexvmError):
    """A system command the lab ran failed; the message holds its output."""

    status = 500
    code = "LabCommandFailed"


class OperationFailed(FlexvmError):
    status = 500
    code = "OperationFailed"


class OperationTimeout(OperationFailed):
    status = 504
    code = "OperationTimeout"


class OperationCanceled(OperationFailed):
    status = 409
    code = "Canceled"


class WorkflowDiverged(OperationFailed):
    code = "WorkflowDiverged"


class ProgramMissing(FlexvmError):
    """A program flexvm runs is not installed; names each one and the Debian package to install."""

    status = 503
    code = "ProgramMissing"

    def __init__(self, missing: dict[str, str]) -> None:
        names = ", ".join(sorted(missing))
        packages = " ".join(sorted(set(missing.values())))
        super().__init__(
            f"{names} not found on this machine: install the Debian package(s) {packages} "
            f"(apt-get install {packages}, or run scripts/setup.sh)",
            details={"missing": dict(missing)},
        )


class DatabaseUnavailable(FlexvmError):
    status = 503
    code = "DatabaseUnavailable"


class SchemaTooNew(FlexvmError):
    code = "SchemaTooNew"

    def __init__(self, found: str, newest_known: str) -> None:
        super().__init__(
            f"the database is at schema revision {found}, newer than this flexvm "
            f"(newest it knows: {newest_known}); upgrade flexvm",
            details={"found": found, "newest_known": newest_known},
        )


class ServerUnavailable(FlexvmError):
    status = 503
    code = "ServerUnavailable"


def _all_classes(root: type[FlexvmError]) -> list[type[FlexvmError]]:
    found = [root]
    for sub in root.__subclasses__():
        found.extend(_all_classes(sub))
    return found


def error_from_dict(data: dict[str, Any]) -> FlexvmError:
    """The error a recorded ``to_dict()`` describes, as its own class again (by its code), so a
    resumed operation sees a step's recorded failure exactly as the first run did."""
    by_code = {cls.code: cls for cls in _all_classes(FlexvmError)}
    cls = by_code.get(str(data.get("code")), FlexvmError)
    err = cls.__new__(cls)
    FlexvmError.__init__(err, str(data.get("message", "")), details=dict(data.get("details") or {}))
    if isinstance(err, InvalidInput):
        err.field = str(err.details.get("field", ""))
    return err
