from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from flexvm.api import schemas
from flexvm.api.access import Scope, platform_access
from flexvm.api.deps import platform
from flexvm.model.access import Right
from flexvm.platform import Platform

router = APIRouter(prefix="/capacity", tags=["capacity"])


@router.get("", response_model=schemas.CapacityOut)
def capacity(scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)) -> schemas.CapacityOut:
    report = p.capacity.report()
    hosts = []
    for item in report.hosts:
        host, room = item.host, item.snapshot.room
        hosts.append(
            schemas.HostRoom(
                name=host.name,
                state=host.state.value,
                fault_domain=host.fault_domain,
                cpu_ratio=host.cpu_ratio,
                ram_ratio=host.ram_ratio,
                disk_ratio=host.disk_ratio,
                physical_cpus=host.capacity_cpus,
                physical_memory_mib=host.capacity_memory_mib,
                physical_disk_bytes=host.disk_capacity_bytes,
                vcpus_total=room.vcpus_total,
                vcpus_allocated=room.vcpus_total - room.vcpus_free,
                memory_mib_total=room.memory_mib_total,
                memory_mib_allocated=room.memory_mib_total - room.memory_mib_free,
                disk_bytes_total=room.disk_bytes_total,
                disk_bytes_allocated=room.disk_bytes_total - room.disk_bytes_free,
                fits=item.fits,
            )
        )
    return schemas.CapacityOut(hosts=hosts, fits=report.totals_fit)


@router.get("/what-if", response_model=list[schemas.WhatIfOut])
def what_if(
    batch: str = Query(..., description="SIZE=COUNT[,SIZE=COUNT…], e.g. Standard_B2s=20"),
    policy: str = "best-fit",
    scope: Scope = platform_access(Right.READ),
    p: Platform = Depends(platform),
) -> list[schemas.WhatIfOut]:
    return [
        schemas.WhatIfOut(
            size=item.size.name,
            requested=item.plan.requested,
            fits=item.plan.fits,
            placed=dict(item.plan.placed),
            first_failure=item.plan.first_failure,
        )
        for item in p.capacity.what_if(batch, policy)
    ]


@router.get("/failure", response_model=schemas.FailureOut)
def failure(
    host: str | None = None, scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)
) -> schemas.FailureOut:
    plan, _snapshots = p.capacity.failure(host)
    return schemas.FailureOut(
        lost_host=plan.lost_host, survives=plan.survives, moved=plan.moved, homeless=plan.homeless
    )
