"""The store, on SQLite and PostgreSQL: the Alembic schema (migrated from empty, or upgraded from the
first revision with data in it) and tables.py agree, migrating is idempotent, a database from a newer
flexvm is refused, and repositories round-trip model dataclasses (timezone-aware datetimes, JSON
lists) and account claims per host.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Table, UniqueConstraint, inspect, text

from flexvm.errors import AlreadyExists, NotFound, SchemaTooNew
from flexvm.model.host import Accelerator, Host, HostState
from flexvm.model.image import Image
from flexvm.model.operation import Operation, OperationStatus, Step, StepStatus
from flexvm.model.scaleset import InstanceState, ScaleInPolicy
from flexvm.model.sizes import Size
from flexvm.model.units import GIB
from flexvm.model.vm import Disk, Nic, PowerState, ProvisioningState, Vm
from flexvm.store.db import MIGRATIONS, Database, open_database
from flexvm.store.repositories import HostRepo, ImageRepo, OperationRepo, SizeRepo, VmRepo
from flexvm.store.tables import Base
from tests.helpers import FLEXVM, free_port

TABLES = sorted(Base.metadata.tables)
# PostgreSQL stores FLOAT (without a precision) as double precision, and reflects it by that name.
SPELLED_AS = {("postgresql", "FLOAT"): "DOUBLE PRECISION"}
PLUS_TWO = timezone(timedelta(hours=2))


@pytest.fixture
def db(empty_db_url: str) -> Iterator[Database]:
    """A database migrated from empty to the newest revision, on each backend."""
    database = open_database(empty_db_url)
    yield database
    database.engine.dispose()


# --- schema --------------------------------------------------------------------------------


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_the_migration_makes_exactly_the_tables_of_the_model(db: Database) -> None:
    names = set(inspect(db.engine).get_table_names())
    assert names - {"alembic_version"} == set(TABLES)
    assert {"sizes", "images", "hosts", "vms", "operations"} <= set(TABLES)


@pytest.mark.parametrize("table", TABLES)
def test_migrated_columns_match_the_tables(db: Database, table: str) -> None:
    inspector = inspect(db.engine)
    dialect = db.engine.dialect
    migrated = {c["name"]: c for c in inspector.get_columns(table)}
    model = Base.metadata.tables[table]
    assert set(migrated) == {c.name for c in model.columns}
    for column in model.columns:
        found = migrated[column.name]
        expected_type = column.type.compile(dialect=dialect)
        expected_type = SPELLED_AS.get((dialect.name, expected_type), expected_type)
        assert str(found["type"].compile(dialect=dialect)) == expected_type, f"{table}.{column.name} type"
        assert found["nullable"] == column.nullable, f"{table}.{column.name} nullable"
    assert set(inspector.get_pk_constraint(table)["constrained_columns"]) == {c.name for c in model.primary_key}


@pytest.mark.parametrize("table", TABLES)
def test_migrated_constraints_and_indexes_match_the_tables(db: Database, table: str) -> None:
    inspector = inspect(db.engine)
    model = Base.metadata.tables[table]
    unique = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
    model_unique = {(c.name,) for c in model.columns if c.unique} | {
        tuple(c.name for c in constraint.columns)
        for constraint in model.constraints
        if isinstance(constraint, UniqueConstraint)
    }
    assert unique == model_unique
    # PostgreSQL backs each unique constraint with an index and reflects that too: not another index.
    indexes = [i for i in inspector.get_indexes(table) if "duplicates_constraint" not in i]
    indexed = {(tuple(i["column_names"]), bool(i.get("unique"))) for i in indexes}
    assert indexed == {(tuple(c.name for c in index.columns), bool(index.unique)) for index in model.indexes}
    foreign = {(tuple(f["constrained_columns"]), f["referred_table"]) for f in inspector.get_foreign_keys(table)}
    assert foreign == {((fk.parent.name,), fk.column.table.name) for fk in model.foreign_keys}


def test_alembic_sees_no_difference_between_migration_and_model(db: Database) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrating_again_is_a_no_op_and_keeps_data(empty_db_url: str) -> None:
    first = open_database(empty_db_url)
    with first.session() as session:
        SizeRepo(session).add(Size("Mine", 1, 256, GIB, "custom", builtin=False))
    first.engine.dispose()
    second = open_database(empty_db_url)
    second.migrate()
    try:
        with second.engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            assert versions == [head_revision()]
        with second.session() as session:
            assert [s.name for s in SizeRepo(session).custom()] == ["Mine"]
    finally:
        second.engine.dispose()


def test_a_database_of_the_one_process_flexvm_upgrades_keeping_its_operations(empty_db_url: str) -> None:
    """An install from before durable operations (revision 0005) upgrades in place: its finished
    operations keep what they said, and gain the columns of who runs them (no one: they are done)."""
    old = Database(empty_db_url)
    old.migrate("0005")
    with old.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO operations (id, kind, target_kind, target_name, status, progress, message,"
                " steps, error, result, params, created_at, started_at, finished_at) VALUES"
                " ('op-1', 'vm.create', 'vm', 'web1', 'succeeded', 100, 'done', :steps, NULL, :result,"
                " :params, :at, :at, :at)"
            ),
            {
                "steps": (  # as the one-process engine recorded them
                    '[{"name": "define", "status": "done", "started_at": "2026-11-30T12:00:00",'
                    ' "finished_at": "2026-11-30T12:00:01", "detail": ""},'
                    ' {"name": "start", "status": "rolled-back", "started_at": "2026-11-30T12:00:01"}]'
                ),
                "result": '{"host": "local"}',
                "params": '{"size": "Standard_B1s"}',
                "at": datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
            },
        )
    old.engine.dispose()
    upgraded = open_database(empty_db_url)  # what `flexvm serve` does at start
    try:
        with upgraded.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
                head_revision()
            ]
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == [], "upgraded differs from migrated from empty"
        with upgraded.session() as session:
            row = OperationRepo(session).row("op-1")
            assert row is not None
            assert (row.status, row.result, row.params) == ("succeeded", {"host": "local"}, {"size": "Standard_B1s"})
            assert (row.owner, row.fence, row.lease_expires, row.claims, row.cancel_requested) == (
                None,
                0,
                None,
                0,
                False,
            )
            steps = OperationRepo(session).get("op-1").steps
            assert [(step.name, step.status) for step in steps] == [
                ("define", StepStatus.DONE),
                ("start", StepStatus.UNDONE),
            ]
    finally:
        upgraded.engine.dispose()


def test_a_failed_unit_of_work_leaves_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as session:
        SizeRepo(session).add(Size("Gone", 1, 256, GIB, "custom", builtin=False))
        session.flush()
        raise RuntimeError("boom")
    with db.session() as session:
        assert SizeRepo(session).custom() == []


# --- model objects -------------------------------------------------------------------------


def make_host(name: str = "h1", **changes: object) -> Host:
    host = Host(
        name=name,
        uri=f"fake://{name}",
        state=HostState.UP,
        cpus=8,
        memory_mib=16384,
        disk_capacity_bytes=200 * GIB,
        accelerator=Accelerator.KVM,
        accelerator_reason="probed: a guest ran",
        libvirt_version="9.0.0",
        hypervisor_version="7.2.0",
        cpu_ratio=2.5,
        ram_ratio=1.25,
        disk_ratio=1.5,
        reserved_memory_mib=1024,
        fault_domain="rack-1",
        hostname="box1",
        cpu_model="Skylake",
        last_seen=datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=PLUS_TWO),
        state_reason="",
    )
    return dataclasses.replace(host, **changes)


def make_image(name: str = "img") -> Image:
    return Image(
        name=name,
        format="qcow2",
        disk_file=f"{name}.qcow2",
        virtual_size=2 * GIB,
        file_size=12345,
        sha256="ab" * 32,
        created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        kernel_file=f"{name}.kernel",
        initrd_file=None,
        cmdline="console=ttyS0 quiet",
        ready_marker="flexvm: ready",
        cloud_init=True,
        description="a test image",
    )


def make_vm(name: str = "web1", host: str | None = "h1", **changes: object) -> Vm:
    vm = Vm(
        id=f"id-{name}",
        name=name,
        size="Standard_B1s",
        image="img",
        vcpus=1,
        memory_mib=1024,
        disk_bytes=4 * GIB,
        provisioning_state=ProvisioningState.SUCCEEDED,
        power_state=PowerState.RUNNING,
        host=host,
        created_at=datetime(2024, 3, 1, 10, 0, tzinfo=PLUS_TWO),
        disk_host=host,
        ready_at=datetime(2024, 3, 1, 8, 0, 5, tzinfo=UTC),
        boot_seconds=4.25,
        user_data="#cloud-config\n",
        active_operation_id=None,
        error=None,
        disks=[Disk(f"{name}-os.qcow2", "os", 4 * GIB), Disk(f"{name}-seed.iso", "seed", 0)],
        nics=[Nic("user", "52:54:00:01:02:03", "10.0.2.15"), Nic("br0", "52:54:00:01:02:04")],
    )
    return dataclasses.replace(vm, **changes)


def make_operation(op_id: str, created: datetime, **changes: object) -> Operation:
    operation = Operation(
        id=op_id,
        kind="vm.create",
        target_kind="vm",
        target_name="web1",
        status=OperationStatus.RUNNING,
        created_at=created,
        started_at=created + timedelta(seconds=1),
        finished_at=None,
        progress=40,
        message="starting",
        steps=[
            Step(
                "image",
                StepStatus.DONE,
                "2024-03-01T10:00:00.000+00:00",
                "2024-03-01T10:00:01.000+00:00",
                "upload",
                output=True,
                server="s1",
            ),
            Step("start", StepStatus.RUNNING, "2024-03-01T10:00:02.000+00:00", attempts=2),
        ],
        error=None,
        result={"image_uploaded": True, "guest": {"cpus": "1"}},
        params={"size": "Standard_B1s", "host": "h1"},
    )
    return dataclasses.replace(operation, **changes)


def assert_same_instant(read: datetime | None, written: datetime) -> None:
    assert read is not None
    assert read.tzinfo is not None, "read back without a timezone"
    assert read == written
    assert read.utcoffset() == timedelta(0), "stored as UTC"


# --- repositories --------------------------------------------------------------------------


def test_host_round_trips(db: Database) -> None:
    host = make_host()
    with db.session() as session:
        HostRepo(session).add(host)
    with db.session() as session:
        read = HostRepo(session).get("h1")
    assert_same_instant(read.last_seen, host.last_seen)  # type: ignore[arg-type]
    assert dataclasses.replace(read, last_seen=None) == dataclasses.replace(host, last_seen=None)


def test_host_save_changes_it(db: Database) -> None:
    with db.session() as session:
        HostRepo(session).add(make_host())
    changed = make_host(state=HostState.DOWN, state_reason="gone", cpu_ratio=1.0, fault_domain=None)
    with db.session() as session:
        HostRepo(session).save(changed)
    with db.session() as session:
        read = HostRepo(session).get("h1")
    assert (read.state, read.state_reason, read.cpu_ratio, read.fault_domain) == (HostState.DOWN, "gone", 1.0, None)


def test_duplicate_host_name_or_uri_is_refused(db: Database) -> None:
    with db.session() as session:
        HostRepo(session).add(make_host("h1"))
    with pytest.raises(AlreadyExists), db.session() as session:
        HostRepo(session).add(make_host("h1", uri="fake://other"))
    with pytest.raises(AlreadyExists, match="URI"), db.session() as session:
        HostRepo(session).add(make_host("h2", uri="fake://h1"))


def test_image_round_trips_and_duplicates_are_refused(db: Database) -> None:
    image = make_image()
    with db.session() as session:
        ImageRepo(session).add(image)
    with db.session() as session:
        assert ImageRepo(session).get("img") == image
        assert ImageRepo(session).find("nope") is None
    with pytest.raises(AlreadyExists), db.session() as session:
        ImageRepo(session).add(make_image())
    with pytest.raises(NotFound), db.session() as session:
        ImageRepo(session).get("nope")


def test_custom_size_round_trips_and_duplicates_are_refused(db: Database) -> None:
    size = Size("Tiny_1", 1, 256, 2 * GIB, "custom", builtin=False)
    with db.session() as session:
        SizeRepo(session).add(size)
    with db.session() as session:
        assert SizeRepo(session).get_custom("Tiny_1") == size
        assert SizeRepo(session).custom() == [size]
    with pytest.raises(AlreadyExists), db.session() as session:
        SizeRepo(session).add(size)
    with db.session() as session:
        SizeRepo(session).delete("Tiny_1")
    with pytest.raises(NotFound), db.session() as session:
        SizeRepo(session).delete("Tiny_1")


def test_vm_round_trips_with_json_lists_and_aware_datetimes(db: Database) -> None:
    vm = make_vm()
    with db.session() as session:
        HostRepo(session).add(make_host())
        VmRepo(session).add(vm)
    with db.session() as session:
        read = VmRepo(session).get("web1")
        assert VmRepo(session).by_id(vm.id) == read
    assert_same_instant(read.created_at, vm.created_at)
    assert_same_instant(read.ready_at, vm.ready_at)  # type: ignore[arg-type]
    assert read == vm
    assert read.disks == [Disk("web1-os.qcow2", "os", 4 * GIB), Disk("web1-seed.iso", "seed", 0)]
    assert read.nics[0].ip == "10.0.2.15" and read.nics[1].ip is None


def test_vm_save_persists_changes_inside_json_lists(db: Database) -> None:
    with db.session() as session:
        HostRepo(session).add(make_host())
        VmRepo(session).add(make_vm())
    with db.session() as session:
        repo = VmRepo(session)
        vm = repo.get("web1")
        vm.nics[0].ip = "10.0.2.99"
        vm.disks[0].size_bytes = 8 * GIB
        vm.set_power(PowerState.STOPPED)
        repo.save(vm)
    with db.session() as session:
        read = VmRepo(session).get("web1")
    assert read.nics[0].ip == "10.0.2.99"
    assert read.disks[0].size_bytes == 8 * GIB
    assert read.power_state is PowerState.STOPPED


def test_duplicate_vm_name_is_refused(db: Database) -> None:
    with db.session() as session:
        HostRepo(session).add(make_host())
        VmRepo(session).add(make_vm())
    with pytest.raises(AlreadyExists), db.session() as session:
        VmRepo(session).add(make_vm(id="another-id"))


def test_vm_list_by_host_and_delete(db: Database) -> None:
    with db.session() as session:
        HostRepo(session).add(make_host("h1"))
        HostRepo(session).add(make_host("h2"))
        repo = VmRepo(session)
        repo.add(make_vm("b", "h1"))
        repo.add(make_vm("a", "h2"))
        repo.add(make_vm("c", "h1"))
    with db.session() as session:
        repo = VmRepo(session)
        assert [v.name for v in repo.list()] == ["a", "b", "c"]
        assert [v.name for v in repo.list(host="h1")] == ["b", "c"]
        repo.delete("id-b")
        repo.delete("no-such-id")  # not an error
    with db.session() as session:
        assert [v.name for v in VmRepo(session).list()] == ["a", "c"]


def test_allocated_on_counts_cpu_and_memory_where_placed_and_disk_where_it_lives(db: Database) -> None:
    with db.session() as session:
        HostRepo(session).add(make_host("h1"))
        HostRepo(session).add(make_host("h2"))
        repo = VmRepo(session)
        repo.add(make_vm("a", "h1", vcpus=2, memory_mib=2048, disk_bytes=8 * GIB))
        repo.add(make_vm("b", "h1", vcpus=1, memory_mib=512, disk_bytes=4 * GIB))
        # Deallocated: holds no CPU or memory, but its disk is still on h1.
        repo.add(
            make_vm(
                "c",
                None,
                disk_host="h1",
                power_state=PowerState.DEALLOCATED,
                vcpus=4,
                memory_mib=8192,
                disk_bytes=16 * GIB,
            )
        )
        repo.add(make_vm("d", "h2", vcpus=8, memory_mib=1024, disk_bytes=GIB))
    with db.session() as session:
        repo = VmRepo(session)
        assert repo.allocated_on("h1") == (3, 2560, 28 * GIB)
        assert repo.allocated_on("h2") == (8, 1024, GIB)
        assert repo.allocated_on("nowhere") == (0, 0, 0)


def test_operation_round_trips(db: Database) -> None:
    created = datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=PLUS_TWO)
    operation = make_operation("op-1", created)
    with db.session() as session:
        OperationRepo(session).add(operation)
    with db.session() as session:
        read = OperationRepo(session).get("op-1")
    assert_same_instant(read.created_at, created)
    assert read == operation
    assert read.duration_seconds is not None


def test_operation_save_records_progress_steps_and_error(db: Database) -> None:
    created = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    with db.session() as session:
        OperationRepo(session).add(make_operation("op-1", created))
    finished = make_operation(
        "op-1",
        created,
        status=OperationStatus.FAILED,
        finished_at=created + timedelta(seconds=9),
        steps=[Step("start", StepStatus.FAILED, "a", "b", "powering on", error={"code": "X", "message": "no"})],
        error={"code": "HypervisorError", "message": "no", "details": {"step": "start"}},
        progress=40,
    )
    with db.session() as session:
        OperationRepo(session).save(finished)
    with db.session() as session:
        read = OperationRepo(session).get("op-1")
    assert read == finished
    assert read.duration_seconds == 8.0
    with pytest.raises(NotFound), db.session() as session:
        OperationRepo(session).save(make_operation("op-missing", created))


def test_operation_list_is_newest_first_and_filters(db: Database) -> None:
    base = datetime(2024, 3, 1, tzinfo=UTC)
    with db.session() as session:
        repo = OperationRepo(session)
        repo.add(make_operation("op-old", base, status=OperationStatus.SUCCEEDED))
        repo.add(make_operation("op-mid", base + timedelta(minutes=1), target_name="other"))
        repo.add(make_operation("op-new", base + timedelta(minutes=2), status=OperationStatus.PENDING))
    with db.session() as session:
        repo = OperationRepo(session)
        assert [o.id for o in repo.list()] == ["op-new", "op-mid", "op-old"]
        assert [o.id for o in repo.list(limit=2)] == ["op-new", "op-mid"]
        assert [o.id for o in repo.list(target="web1")] == ["op-new", "op-old"]
        unfinished = repo.list(statuses=[OperationStatus.PENDING, OperationStatus.RUNNING])
        assert [o.id for o in unfinished] == ["op-new", "op-mid"]
        assert repo.find("nope") is None


# --- migrations: upgrades with data, and a schema from a newer flexvm -----------------------


def rows_of_the_first_revision() -> dict[str, list[dict[str, object]]]:
    """One row per table the first revision made, in its own columns (none of the later ones)."""
    created = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    return {
        "sizes": [dict(name="Old_1", vcpus=1, memory_mib=512, disk_bytes=GIB, family="custom", created_at=created)],
        "images": [
            dict(
                name="img", format="qcow2", disk_file="img.qcow2", virtual_size=2 * GIB, file_size=123,
                sha256="ab" * 32, kernel_file=None, initrd_file=None, cmdline=None, ready_marker="flexvm: ready",
                cloud_init=True, description="from 0001", created_at=created,
            )
        ],
        "hosts": [
            dict(
                name="h1", uri="fake://h1", state="up", state_reason="", cpus=4, memory_mib=8192,
                disk_capacity_bytes=100 * GIB, accelerator="tcg", accelerator_reason="", libvirt_version="9.0.0",
                hypervisor_version="7.2.0", hostname="box", cpu_model="", cpu_ratio=4.0, ram_ratio=1.0,
                disk_ratio=1.0, reserved_memory_mib=512, fault_domain=None, last_seen=created, created_at=created,
            )
        ],
        "vms": [
            dict(
                id="id-old", name="old", size="Standard_B1s", image="img", vcpus=1, memory_mib=1024,
                disk_bytes=4 * GIB, provisioning_state="succeeded", power_state="running", host="h1",
                disk_host="h1", created_at=created, ready_at=None, boot_seconds=4.5, user_data=None,
                active_operation_id=None, error=None, disks=[{"name": "old-os.qcow2", "role": "os",
                "size_bytes": 4 * GIB}], nics=[{"network": "user", "mac": "52:54:00:00:00:01", "ip": None}],
            )
        ],
        "operations": [
            dict(
                id="op-old", kind="vm.create", target_kind="vm", target_name="old", status="succeeded",
                progress=100, message="", steps=[], error=None, result={"boot_seconds": 4.5}, params={},
                created_at=created, started_at=created, finished_at=created,
            )
        ],
    }  # fmt: skip


def test_upgrading_from_the_first_revision_keeps_the_data_and_ends_at_the_model(empty_db_url: str) -> None:
    database = Database(empty_db_url)
    try:
        database.migrate("0001")
        with database.engine.begin() as connection:
            for table_name, rows in rows_of_the_first_revision().items():
                table = Table(table_name, MetaData(), autoload_with=connection)
                connection.execute(table.insert(), rows)
        database.migrate()
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
                head_revision()
            ]
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        with database.session() as session:
            host = HostRepo(session).get("h1")
            image = ImageRepo(session).get("img")
            vm = VmRepo(session).get("old")
            operation = OperationRepo(session).get("op-old")
            sizes = SizeRepo(session).custom()
        assert (host.cpus, host.advertised_cpus, host.network) == (4, None, None)
        assert_same_instant(host.last_seen, datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
        assert (image.description, image.requires) == ("from 0001", [])  # the column 0002 added, defaulted
        assert (vm.host, vm.availability_set, vm.max_size, vm.moving_to) == ("h1", None, None, None)
        assert vm.disks == [Disk("old-os.qcow2", "os", 4 * GIB)]
        assert (operation.status, operation.result) == (OperationStatus.SUCCEEDED, {"boot_seconds": 4.5})
        assert [s.name for s in sizes] == ["Old_1"]
    finally:
        database.engine.dispose()


FUTURE = "9999_from_a_newer_flexvm"


def from_the_future(url: str) -> None:
    """Migrate the database at ``url``, then mark it as a newer flexvm would have left it."""
    database = open_database(url)
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
    database.engine.dispose()


def test_a_database_from_a_newer_flexvm_is_refused_and_left_alone(db_url: str) -> None:
    from_the_future(db_url)
    with pytest.raises(SchemaTooNew) as caught:
        open_database(db_url)
    assert caught.value.message == (
        f"the database is at schema revision {FUTURE}, newer than this flexvm "
        f"(newest it knows: {head_revision()}); upgrade flexvm"
    )
    assert caught.value.details == {"found": FUTURE, "newest_known": head_revision()}
    database = Database(db_url)
    try:
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [FUTURE]
    finally:
        database.engine.dispose()


def test_the_server_refuses_to_start_on_a_database_from_a_newer_flexvm(db_url: str, tmp_path: Path) -> None:
    from_the_future(db_url)
    env = {
        **os.environ,
        "FLEXVM_HOME": str(tmp_path / "home"),
        "FLEXVM_DB_URL": db_url,
        "FLEXVM_PORT": str(free_port()),
        "FLEXVM_LIBVIRT_URI": "",
    }
    done = subprocess.run(
        [FLEXVM, "serve"], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: the database is at schema revision {FUTURE}, newer than this flexvm" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "server.url").exists()  # it never got as far as serving


# SQLite stores any length in a VARCHAR(n); PostgreSQL refuses a longer value, so a new enum value
# that is too long would fail only there. The columns each enum is stored in:
ENUM_COLUMNS = [
    (HostState, "hosts", "state"),
    (Accelerator, "hosts", "accelerator"),
    (ProvisioningState, "vms", "provisioning_state"),
    (PowerState, "vms", "power_state"),
    (OperationStatus, "operations", "status"),
    (ScaleInPolicy, "scale_sets", "scale_in_policy"),
    (InstanceState, "scale_set_instances", "state"),
]


@pytest.mark.parametrize(("enum", "table", "column"), ENUM_COLUMNS, ids=[c[0].__name__ for c in ENUM_COLUMNS])
def test_every_enum_value_fits_its_column(enum: type[StrEnum], table: str, column: str) -> None:
    length = Base.metadata.tables[table].c[column].type.length  # type: ignore[attr-defined]
    assert [value for value in enum if len(value) > length] == []
