"""The one exception tree of flexvm.

Every error the platform raises on purpose is a ``FlexvmError``. Each class carries the
HTTP status the API answers with and a short machine code (Azure's ``error.code``)::

    FlexvmError (500)
    ├── InvalidInput (400)            bad input: names the field and the rule
    ├── NotFound (404)                a named thing does not exist
    ├── Conflict (409)                the request clashes with what exists
    │   ├── AlreadyExists (409)       a name is taken
    │   ├── Busy (409)                another operation holds the resource
    │   └── InvalidState (409)        the resource is in the wrong state for this
    ├── CapacityError (409)           no host can hold it (details name each host's reason)
    ├── Unauthorized (401)            missing or wrong bearer token
    ├── ImageError (422)              an image file is corrupt, truncated or unusable
    ├── HypervisorError (502)         libvirt/QEMU refused or failed
    │   └── HypervisorUnavailable (503)   libvirtd cannot be reached
    ├── OperationFailed (500)         a long-running operation ended in failure
    │   └── OperationTimeout (504)    it ran out of time (e.g. a guest never became ready)
    ├── DatabaseUnavailable (503)     the database cannot be reached, or did not answer in time
    ├── SchemaTooNew (500)            the database was migrated by a newer flexvm than this one
    └── ServerUnavailable (503)       the CLI cannot reach the flexvm server

Library code raises these and chains the cause (``raise X(...) from err``); only the edges
(API, CLI) turn them into responses or messages.
"""

from __future__ import annotations

from typing import Any


class FlexvmError(Exception):
    status = 500
    code = "InternalError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        """Azure's error shape: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidInput(FlexvmError):
    status = 400
    code = "InvalidInput"

    def __init__(self, field: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{field}: {message}", details={"field": field, **(details or {})})
        self.field = field


class NotFound(FlexvmError):
    status = 404
    code = "NotFound"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} '{name}' not found", details={"kind": kind, "name": name})


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


class CapacityError(FlexvmError):
    status = 409
    code = "InsufficientCapacity"


class Unauthorized(FlexvmError):
    status = 401
    code = "Unauthorized"


class ImageError(FlexvmError):
    status = 422
    code = "InvalidImage"


class HypervisorError(FlexvmError):
    status = 502
    code = "HypervisorError"


class HypervisorUnavailable(HypervisorError):
    status = 503
    code = "HypervisorUnavailable"


class OperationFailed(FlexvmError):
    status = 500
    code = "OperationFailed"


class OperationTimeout(OperationFailed):
    status = 504
    code = "OperationTimeout"


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
