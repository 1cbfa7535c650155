"""Repositories for scale sets, their instances and the autoscale history."""

from __future__ import annotations

import builtins
import dataclasses
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from flexvm.errors import AlreadyExists, NotFound
from flexvm.model.scaleset import AutoscaleEvent, Instance, InstanceState, LoadBalancerSpec, ScaleInPolicy, ScaleSet
from flexvm.store.tables import AutoscaleEventRow, ScaleSetInstanceRow, ScaleSetRow

MAX_EVENTS_KEPT = 5000  # per set: the history is for reading, not an archive


def _scale_set(row: ScaleSetRow) -> ScaleSet:
    values: dict[str, Any] = {f.name: getattr(row, f.name) for f in dataclasses.fields(ScaleSet)}
    values["scale_in_policy"] = ScaleInPolicy(row.scale_in_policy)
    values["load_balancer"] = LoadBalancerSpec(**row.load_balancer) if row.load_balancer else None
    values["rules"] = list(row.rules or [])
    return ScaleSet(**values)


def _columns(scale_set: ScaleSet) -> dict[str, Any]:
    values = {f.name: getattr(scale_set, f.name) for f in dataclasses.fields(ScaleSet)}
    values["scale_in_policy"] = scale_set.scale_in_policy.value
    values["load_balancer"] = dataclasses.asdict(scale_set.load_balancer) if scale_set.load_balancer else None
    return values


def _instance(row: ScaleSetInstanceRow) -> Instance:
    return Instance(row.vm_name, row.scale_set, row.index, row.model_version, InstanceState(row.state), row.created_at)


class ScaleSetRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> builtins.list[ScaleSet]:
        return [_scale_set(r) for r in self.session.scalars(select(ScaleSetRow).order_by(ScaleSetRow.name))]

    def find(self, name: str) -> ScaleSet | None:
        row = self.session.get(ScaleSetRow, name)
        return _scale_set(row) if row else None

    def get(self, name: str) -> ScaleSet:
        found = self.find(name)
        if found is None:
            raise NotFound("scale set", name)
        return found

    def lock(self, name: str) -> ScaleSet:
        row = self.session.scalars(select(ScaleSetRow).where(ScaleSetRow.name == name).with_for_update()).first()
        if row is None:
            raise NotFound("scale set", name)
        return _scale_set(row)

    def add(self, scale_set: ScaleSet) -> None:
        if self.session.get(ScaleSetRow, scale_set.name) is not None:
            raise AlreadyExists("scale set", scale_set.name)
        self.session.add(ScaleSetRow(**_columns(scale_set)))

    def save(self, scale_set: ScaleSet) -> None:
        row = self.session.get(ScaleSetRow, scale_set.name)
        if row is None:
            raise NotFound("scale set", scale_set.name)
        for key, value in _columns(scale_set).items():
            setattr(row, key, value)

    def delete(self, name: str) -> None:
        self.session.execute(delete(ScaleSetInstanceRow).where(ScaleSetInstanceRow.scale_set == name))
        self.session.execute(delete(AutoscaleEventRow).where(AutoscaleEventRow.scale_set == name))
        row = self.session.get(ScaleSetRow, name)
        if row is not None:
            self.session.delete(row)

    # --- instances ---------------------------------------------------------------------------
    def instances(self, name: str) -> builtins.list[Instance]:
        rows = self.session.scalars(
            select(ScaleSetInstanceRow).where(ScaleSetInstanceRow.scale_set == name).order_by(ScaleSetInstanceRow.index)
        )
        return [_instance(r) for r in rows]

    def instance_of(self, vm_name: str) -> Instance | None:
        row = self.session.get(ScaleSetInstanceRow, vm_name)
        return _instance(row) if row else None

    def set_of_each_vm(self) -> dict[str, str]:
        rows = self.session.execute(select(ScaleSetInstanceRow.vm_name, ScaleSetInstanceRow.scale_set))
        return {vm: scale_set for vm, scale_set in rows}

    def add_instance(self, instance: Instance) -> None:
        self.session.add(
            ScaleSetInstanceRow(
                vm_name=instance.vm_name,
                scale_set=instance.scale_set,
                index=instance.index,
                model_version=instance.model_version,
                state=instance.state.value,
                created_at=instance.created_at,
            )
        )

    def set_state(self, vm_name: str, state: InstanceState) -> None:
        row = self.session.get(ScaleSetInstanceRow, vm_name)
        if row is not None:
            row.state = state.value

    def remove_instance(self, vm_name: str) -> None:
        row = self.session.get(ScaleSetInstanceRow, vm_name)
        if row is not None:
            self.session.delete(row)

    # --- autoscale history -------------------------------------------------------------------
    def add_event(self, event: AutoscaleEvent) -> None:
        self.session.add(
            AutoscaleEventRow(
                scale_set=event.scale_set,
                at=event.at,
                action=event.action,
                current=event.current,
                target=event.target,
                reason=event.reason,
                rule_id=event.rule_id,
                evidence=dict(event.evidence),
            )
        )

    def events(self, name: str, limit: int = 50) -> builtins.list[AutoscaleEvent]:
        rows = self.session.scalars(
            select(AutoscaleEventRow)
            .where(AutoscaleEventRow.scale_set == name)
            .order_by(AutoscaleEventRow.id.desc())
            .limit(limit)
        )
        events = [
            AutoscaleEvent(r.id, r.scale_set, r.at, r.action, r.current, r.target, r.reason, r.rule_id, r.evidence)
            for r in rows
        ]
        return events[::-1]

    def forget_old_events(self, name: str) -> None:
        cutoff = self.session.scalars(
            select(AutoscaleEventRow.id)
            .where(AutoscaleEventRow.scale_set == name)
            .order_by(AutoscaleEventRow.id.desc())
            .offset(MAX_EVENTS_KEPT)
            .limit(1)
        ).first()
        if cutoff is not None:
            self.session.execute(
                delete(AutoscaleEventRow).where(AutoscaleEventRow.scale_set == name, AutoscaleEventRow.id <= cutoff)
            )
