"""`flexvm project|user|token|role|audit|whoami`: who may do what, in which project."""

from __future__ import annotations

from typing import Any

import typer

from flexvm.cli import output, projects_context
from flexvm.cli.common import OutputOpt, client
from flexvm.errors import InvalidInput

project_app = typer.Typer(help="Projects: who owns what, with quotas (Azure's resource groups).", no_args_is_help=True)
user_app = typer.Typer(help="Users of the platform.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens: shown once, kept hashed, can expire, be narrowed, be revoked.")
token_app.info.no_args_is_help = True
role_app = typer.Typer(help="Roles: Owner, Contributor, VM Operator, Reader, on a project or the platform.")
role_app.info.no_args_is_help = True


# --- projects -------------------------------------------------------------------------------


def _quota_cell(use: dict[str, Any]) -> str:
    shown = {"memory_mib": output.mib, "disk_bytes": output.nbytes}.get(use["quota"], str)
    limit = "no limit" if use["limit"] is None else shown(use["limit"])
    return f"{shown(use['used'])} of {limit}"


@project_app.command("create")
def create_project(
    name: str,
    description: str = typer.Option("", "--description"),
    vcpus: int | None = typer.Option(None, "--quota-vcpus", help="vCPUs of allocated VMs"),
    memory: str | None = typer.Option(None, "--quota-memory", help="memory of allocated VMs, e.g. 8G"),
    vms: int | None = typer.Option(None, "--quota-vms", help="VMs, allocated or not"),
    disk: str | None = typer.Option(None, "--quota-disk", help="disks and private images, e.g. 200G"),
    instances: int | None = typer.Option(None, "--quota-instances", help="scale-set instances"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Make a project (the admin does)."""
    quotas = {"vcpus": vcpus, "memory": memory, "vms": vms, "disk": disk, "instances": instances}
    body = {"name": name, "description": description, "quotas": {k: v for k, v in quotas.items() if v is not None}}
    project = client().post("/projects", body)
    if fmt is output.Format.json:
        output.emit_json(project)
    else:
        output.console.print(f"project {project['name']} created")


@project_app.command("list")
def list_projects(fmt: output.Format = OutputOpt) -> None:
    """The projects you hold a role in (every project, for the admin)."""
    projects = client().get("/projects")
    if fmt is output.Format.json:
        output.emit_json(projects)
        return
    current = projects_context.current()
    output.table(
        projects,
        [
            ("", lambda p: "*" if p["name"] == current else ""),
            ("NAME", lambda p: p["name"]),
            ("YOUR ROLE", lambda p: p["your_role"] or ""),
            ("DESCRIPTION", lambda p: p["description"]),
        ],
    )


@project_app.command("show")
def show_project(
    name: str | None = typer.Argument(None, help="default: the current project"), fmt: output.Format = OutputOpt
) -> None:
    """A project with its use against every quota."""
    project = client().get(f"/projects/{name or projects_context.current()}")
    if fmt is output.Format.json:
        output.emit_json(project)
        return
    output.details(
        [
            ("name", project["name"]),
            ("description", project["description"]),
            ("your role", project["your_role"] or ""),
            *[(f"quota {use['quota']}", _quota_cell(use)) for use in project["quotas"]],
            *[(f"network {n['network']}", _network_cell(n)) for n in project["networks"]],
        ]
    )


def _network_cell(share: dict[str, Any]) -> str:
    blocks = ", ".join(share["blocks"]) or "no block of its own"
    return f"{share['addresses']} address(es) held; its blocks: {blocks}"


@project_app.command("quota")
def set_quota(
    name: str,
    vcpus: int | None = typer.Option(None, "--vcpus"),
    memory: str | None = typer.Option(None, "--memory"),
    vms: int | None = typer.Option(None, "--vms"),
    disk: str | None = typer.Option(None, "--disk"),
    instances: int | None = typer.Option(None, "--instances"),
    clear: list[str] = typer.Option([], "--clear", help="remove a limit: vcpus, memory, vms, disk, instances"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Change a project's limits (the admin does); the ones not named stay."""
    quotas = {"vcpus": vcpus, "memory": memory, "vms": vms, "disk": disk, "instances": instances}
    body = {"quotas": {k: v for k, v in quotas.items() if v is not None}, "clear": clear}
    project = client().patch(f"/projects/{name}", body)
    if fmt is output.Format.json:
        output.emit_json(project)
    else:
        output.details([(f"quota {use['quota']}", _quota_cell(use)) for use in project["quotas"]])


@project_app.command("delete")
def delete_project(name: str) -> None:
    """Delete a project (refused while it holds anything)."""
    client().delete(f"/projects/{name}")
    output.console.print(f"deleted project {name}")


@project_app.command("use")
def use_project(name: str) -> None:
    """Work in this project from now on (``--project`` and FLEXVM_PROJECT still win)."""
    client(name).get(f"/projects/{name}")  # refuse a project that does not exist, or that you cannot see
    path = projects_context.use(name)
    output.console.print(f"now working in project {name} (saved in {path})")


# --- users ----------------------------------------------------------------------------------


@user_app.command("create")
def create_user(name: str, fmt: output.Format = OutputOpt) -> None:
    """Add a user (the admin does). Give them a role and a token next."""
    user = client().post("/users", {"name": name})
    if fmt is output.Format.json:
        output.emit_json(user)
    else:
        output.console.print(f"user {user['name']} created; `flexvm token create --user {name}` gives them a token")


@user_app.command("list")
def list_users(fmt: output.Format = OutputOpt) -> None:
    users = client().get("/users")
    if fmt is output.Format.json:
        output.emit_json(users)
        return
    output.table(users, [("NAME", lambda u: u["name"]), ("DISABLED", lambda u: "yes" if u["disabled"] else "")])


@user_app.command("disable")
def disable_user(name: str) -> None:
    """Disable a user: their tokens stop working at once."""
    client().patch(f"/users/{name}", {"disabled": True})
    output.console.print(f"user {name} disabled")


@user_app.command("enable")
def enable_user(name: str) -> None:
    client().patch(f"/users/{name}", {"disabled": False})
    output.console.print(f"user {name} enabled")


# --- tokens ---------------------------------------------------------------------------------


TOKEN_COLUMNS = [
    ("ID", lambda t: t["id"]),
    ("USER", lambda t: t["user"]),
    ("NAME", lambda t: t["name"]),
    ("STATE", lambda t: t["state"]),
    ("NARROWED TO", lambda t: " ".join(x for x in (t["role"], t["project"] and f"project {t['project']}") if x)),
    ("EXPIRES", lambda t: t["expires_at"] or "never"),
    ("LAST USED", lambda t: t["last_used_at"] or "never"),
]


@token_app.command("create")
def create_token(
    user: str = typer.Option(..., "--user"),
    name: str = typer.Option("", "--name", help="what it is for, e.g. ci"),
    expires: str | None = typer.Option(None, "--expires", help="e.g. 30d, 12h (default: never)"),
    role: str | None = typer.Option(None, "--role", help="narrow it to at most this role"),
    project: str | None = typer.Option(None, "--project", help="narrow it to this project"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Make a token and print it once: only its hash is kept."""
    body = {"user": user, "name": name, "expires": expires, "role": role, "project": project}
    token = client().post("/tokens", {k: v for k, v in body.items() if v not in (None, "")})
    if fmt is output.Format.json:
        output.emit_json(token)
        return
    output.console.print(token["token"], highlight=False, soft_wrap=True)
    output.err_console.print(f"token {token['id']} for {token['user']}: shown this once, keep it safe")


@token_app.command("list")
def list_tokens(user: str | None = typer.Option(None, "--user"), fmt: output.Format = OutputOpt) -> None:
    """Your tokens (the admin: everyone's, or one user's)."""
    tokens = client().get("/tokens", user=user)
    if fmt is output.Format.json:
        output.emit_json(tokens)
    else:
        output.table(tokens, TOKEN_COLUMNS)


@token_app.command("revoke")
def revoke_token(token_id: str) -> None:
    """Revoke a token: it stops working at once."""
    client().delete(f"/tokens/{token_id}")
    output.console.print(f"token {token_id} revoked")


# --- roles ----------------------------------------------------------------------------------


def _role_path(project: str | None, platform: bool) -> tuple[str, str | None]:
    if platform and project:
        raise InvalidInput("project", "give --project or --platform, not both")
    if platform:
        return "/platform-roles", None
    return "/roles", project or projects_context.current()


@role_app.command("assign")
def assign_role(
    user: str = typer.Option(..., "--user"),
    role: str = typer.Option(..., "--role", help="Owner, Contributor, 'VM Operator' or Reader"),
    project: str | None = typer.Option(None, "--project", help="default: the current project"),
    platform: bool = typer.Option(False, "--platform", help="on the whole platform (the admin does)"),
) -> None:
    """Give a user a role on a project (its Owners do) or on the platform."""
    path, scope = _role_path(project, platform)
    made = client(scope).post(path, {"user": user, "role": role})
    where = f"project {made['project']}" if made["project"] else "the platform"
    output.console.print(f"{made['user']} is {made['role']} on {where}")


@role_app.command("list")
def list_roles(
    project: str | None = typer.Option(None, "--project"),
    platform: bool = typer.Option(False, "--platform"),
    fmt: output.Format = OutputOpt,
) -> None:
    path, scope = _role_path(project, platform)
    roles = client(scope).get(path)
    if fmt is output.Format.json:
        output.emit_json(roles)
        return
    output.table(
        roles,
        [
            ("USER", lambda a: a["user"]),
            ("ROLE", lambda a: a["role"]),
            ("SCOPE", lambda a: f"project {a['project']}" if a["project"] else "platform"),
        ],
    )


@role_app.command("remove")
def remove_role(
    user: str = typer.Option(..., "--user"),
    role: str = typer.Option(..., "--role"),
    project: str | None = typer.Option(None, "--project"),
    platform: bool = typer.Option(False, "--platform"),
) -> None:
    path, scope = _role_path(project, platform)
    client(scope).delete(path, user=user, role=role)
    output.console.print(f"removed {role} of {user}")


# --- the audit trail, and who am I ------------------------------------------------------------


def audit(
    project: str | None = typer.Option(None, "--project", help="default: the current project"),
    user: str | None = typer.Option(None, "--user"),
    since: str | None = typer.Option(None, "--since", help="e.g. 1h, 7d"),
    every_project: bool = typer.Option(False, "--all", help="every project and the platform (the admin)"),
    limit: int = typer.Option(100, "--limit"),
    fmt: output.Format = OutputOpt,
) -> None:
    """Who changed what, and who was refused: newest first."""
    if every_project:
        events = client().get("/audit/all", user=user, since=since, limit=limit)
    else:
        events = client(project).get("/audit", user=user, since=since, limit=limit)
    if fmt is output.Format.json:
        output.emit_json(events)
        return
    output.table(
        events,
        [
            ("AT", lambda e: e["at"][:19]),
            ("USER", lambda e: e["user"] or "-"),
            ("FROM", lambda e: e["address"]),
            ("ACTION", lambda e: e["action"]),
            ("PROJECT", lambda e: e["project"] or ""),
            ("RESOURCE", lambda e: e["resource"]),
            ("OUTCOME", lambda e: f"{e['outcome']} ({e['status']})"),
            ("DETAIL", lambda e: e["detail"]),
        ],
    )


def whoami(fmt: output.Format = OutputOpt) -> None:
    """The user this token is, and its roles."""
    me = client().get("/me")
    if fmt is output.Format.json:
        output.emit_json(me)
        return
    roles = [f"{role} on project {project}" for project, role in me["project_roles"].items()]
    if me["platform_role"]:
        roles.insert(0, f"{me['platform_role']} on the platform")
    output.details([("user", me["user"]), ("token", me["token_id"]), ("roles", "; ".join(roles) or "none")])
