"""Projects: made and removed by the admin, each with its quotas and what it uses of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flexvm.errors import Conflict, InvalidInput
from flexvm.model.access import QUOTA_NAMES, Project, Quotas
from flexvm.model.projects import DEFAULT_PROJECT, check_project
from flexvm.store.access import ProjectRepo, RoleRepo, TokenRepo
from flexvm.store.db import Database
from flexvm.store.repositories import NetworkRepo

ForgetNetworks = Callable[[str, list[str]], None]


@dataclass(frozen=True)
class ProjectView:
    project: Project
    used: Quotas
    # network -> its addresses the project's VMs hold, and the project's own blocks of it
    networks: dict[str, tuple[int, list[str]]] = field(default_factory=dict)


def check_quotas(quotas: Quotas) -> Quotas:
    for name, value in quotas.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidInput(f"quota_{name}", f"{value!r} must be a whole number, 0 or more")
    return quotas


class ProjectService:
    def __init__(self, db: Database, forget_networks: ForgetNetworks | None = None) -> None:
        self.db = db
        # Told (project, networks) once a deleted project's blocks are given back: the hosts of
        # those networks may drop its filters (compute.isolation.Isolator.forget).
        self.forget_networks = forget_networks

    def create(self, name: str, description: str = "", quotas: Quotas | None = None) -> Project:
        quotas = quotas or Quotas()
        check_project("name", name)
        check_quotas(quotas)
        with self.db.session() as session:
            return ProjectRepo(session).add(name, description, quotas)

    def list(self) -> list[Project]:
        with self.db.session() as session:
            return ProjectRepo(session).list()

    def exists(self, name: str) -> bool:
        with self.db.session() as session:
            return ProjectRepo(session).find(name) is not None

    def show(self, name: str) -> ProjectView:
        with self.db.session() as session:
            project = ProjectRepo(session).get(name)
            return ProjectView(project, ProjectRepo(session).usage(name), NetworkRepo(session).holdings_of(name))

    def set_quotas(self, name: str, changes: dict[str, int | None]) -> Project:
        """Change the named limits (None removes one); the others stay as they are."""
        for key in changes:
            if key not in QUOTA_NAMES:
                raise InvalidInput(key, f"is not a quota: use one of {', '.join(QUOTA_NAMES)}")
        with self.db.session() as session:
            repo = ProjectRepo(session)
            current = repo.get(name).quotas
            merged = check_quotas(Quotas(**{**dict(current.items()), **changes}))
            return repo.set_quotas(name, merged)

    def delete(self, name: str) -> None:
        """Refused while the project holds anything; its role assignments and tokens narrowed to
        it go with it. In one unit of work, so a create racing the delete is refused or wins."""
        if name == DEFAULT_PROJECT:
            raise Conflict("project 'default' holds what flexvm had before projects and is never deleted")
        with self.db.session() as session:
            projects = ProjectRepo(session)
            projects.get(name)
            held = projects.holdings(name)
            if held:
                listed = ", ".join(f"{count} {kind}" for kind, count in held.items())
                raise Conflict(f"project '{name}' still holds {listed}; delete them first", details={"holds": held})
            RoleRepo(session).delete_in_project(name)
            TokenRepo(session).delete_narrowed_to(name)
            networks = NetworkRepo(session).release_blocks_of(name)
            projects.delete(name)
        if networks and self.forget_networks is not None:
            self.forget_networks(name, networks)
