"""How the API words a refusal's remedy: the request field to set, or the call to make first.

Services put what would let a request through in ``details["remedy"]``, in the domain's words
(``flexvm.errors.Remedy``); the API adds ``details["hint"]`` naming the field or call an API
client uses. The message stays the service's: what was refused and why.
"""

from __future__ import annotations

from typing import Any

from flexvm.api.deps import PREFIX
from flexvm.errors import Action, Option, Remedy

OPTIONS: dict[Option, str] = {
    Option.ALLOW_RESTART: "send allow_restart: true to resize it with a restart",
    Option.FORCE: "send force: true to shrink it anyway",
    Option.COLD: "send cold: true to move it stopped",
}
ACTIONS: dict[Action, str] = {
    Action.ADD_HOST: f"add one: POST {PREFIX}/hosts",
    Action.ADD_HOST_ON_NETWORK: f"add one on a network: POST {PREFIX}/hosts with network and bridge",
    Action.BUILD_IMAGE: f"build one: POST {PREFIX}/images/build with recipe: {{image}}",
    Action.READ_CONSOLE: f"read its console: GET {PREFIX}/vms/{{vm}}/console",
    Action.ADD_SCALE_SET_INSTANCE: f"add one: POST {PREFIX}/scalesets/{{scale_set}}/scale with instances",
    Action.CHANGE_AUTOSCALE_RANGE: f"change the range first: PUT {PREFIX}/scalesets/{{scale_set}}/autoscale",
}


def with_hint(details: dict[str, Any]) -> dict[str, Any]:
    """An error's details, with the API's ``hint`` when they carry a remedy."""
    remedy = Remedy.from_dict(details.get("remedy"))
    if remedy is None:
        return details
    return {**details, "hint": remedy.worded(OPTIONS, ACTIONS)}


def operation_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """A failed operation's stored error, with the hint as the API words it."""
    if error is None:
        return None
    return {**error, "details": with_hint(error.get("details") or {})}
