"""How the CLI words a refusal's remedy: the flag to add, or the command to run first.

Services say what would let a request through in the domain's words (``flexvm.errors.Remedy``,
carried in the error's details, also across the API); this is the one place that knows which
flag or command that is on the command line.
"""

from __future__ import annotations

from flexvm.errors import Action, FlexvmError, Option

OPTIONS: dict[Option, str] = {
    Option.ALLOW_RESTART: "add --allow-restart to resize it with a restart",
    Option.FORCE: "add --force to shrink it anyway",
    Option.COLD: "add --cold to move it stopped",
}
ACTIONS: dict[Action, str] = {
    Action.ADD_HOST: "add one with `flexvm host add NAME --uri URI`",
    Action.ADD_HOST_ON_NETWORK: (
        "add one with `flexvm host add NAME --uri URI --network NET --bridge BRIDGE`, "
        "or try the lab: `flexvm lab up --hosts 2`"
    ),
    Action.BUILD_IMAGE: "build one with `flexvm image build {image}`",
    Action.READ_CONSOLE: "see `flexvm vm console {vm}`",
    Action.ADD_SCALE_SET_INSTANCE: "add one with `flexvm scaleset scale {scale_set} --instances N`",
    Action.CHANGE_AUTOSCALE_RANGE: (
        "change the range first with `flexvm autoscale set {scale_set} --min N --max N --default N`"
    ),
}


def explain(err: FlexvmError) -> str:
    """The error as the CLI prints it: its message, then what to type about it, if anything.

    A message of several lines (a console's tail) keeps the hint on a line of its own."""
    remedy = err.remedy
    if remedy is None and err.details.get("kind") == "project" and err.status == 404:
        # A project the token cannot see looks absent, by design; say where the CLI looked.
        return f"{err.message}; `flexvm project list` shows yours, `--project P` or `flexvm project use P` picks one"
    if remedy is None:
        return err.message
    hint = remedy.worded(OPTIONS, ACTIONS)
    return f"{err.message}\n{hint}" if "\n" in err.message else f"{err.message}; {hint}"
