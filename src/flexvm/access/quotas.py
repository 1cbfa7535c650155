"""Project quotas, enforced in one place.

Every path that makes a project use more — a create (also a scale set's instances, an import, a
rolling update's surge), a start from deallocated, a resize, a disk resize, a capture or upload of
an image, a scale-out — calls ``admit`` inside the same unit of work that claims host capacity.
Units of work are serialised (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock), so parallel
requests are counted one after another and can never exceed a limit together.

What counts, as Azure counts it: vCPUs and memory of VMs that hold a host (a deallocated VM holds
none), every VM, the disks of every VM and the project's private images, and scale sets' capacity.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from flexvm.errors import QuotaExceeded
from flexvm.model.access import Quotas
from flexvm.model.projects import project_of
from flexvm.model.sizes import Size
from flexvm.store.access import ProjectRepo

UNITS = {"vcpus": "vCPUs", "memory_mib": "MiB", "vms": "VMs", "disk_bytes": "bytes", "instances": "instances"}


def admit(session: Session, project: str, ask: Quotas, *, already_counted: Quotas | None = None) -> None:
    """Refuse (QuotaExceeded, nothing written) if ``ask`` on top of what ``project`` uses passes a
    limit. ``already_counted`` is the part of today's use the ask replaces (a resize's old size,
    when the record already holds it), so it is not counted twice. A project that no longer exists
    refuses too (NotFound): a create racing the project's delete loses cleanly."""
    limits = ProjectRepo(session).get(project).quotas
    if all(limit is None for _, limit in limits.items()):
        return
    used = ProjectRepo(session).usage(project)
    for name, limit in limits.items():
        asked = getattr(ask, name) or 0
        if limit is None or asked <= 0:
            continue
        current = (getattr(used, name) or 0) - ((getattr(already_counted, name) or 0) if already_counted else 0)
        if current + asked > limit:
            raise QuotaExceeded(project, name, asked, current, limit, UNITS[name])


def admit_instances(session: Session, set_key: str, size: Size, more: int) -> None:
    """A scale set growing by ``more`` instances: the instances quota, and up front the VMs they
    will be (their creates are admitted again, one by one, as they are made)."""
    if more > 0:
        ask = Quotas(
            vcpus=more * size.vcpus,
            memory_mib=more * size.memory_mib,
            vms=more,
            disk_bytes=more * size.disk_bytes,
            instances=more,
        )
        admit(session, project_of(set_key), ask)


def admit_vm(session: Session, key: str, ask: Quotas, *, already_counted: Quotas | None = None) -> None:
    """``admit`` for the project a VM's (or scale set's) key names."""
    admit(session, project_of(key), ask, already_counted=already_counted)
