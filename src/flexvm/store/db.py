"""The database: one engine, sessions as units of work, migrations applied at open."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers (the API) go on while a writer (an operation) commits.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # Take over transaction control from pysqlite so BEGIN IMMEDIATE can be issued below.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    # Write lock at the start of every transaction: read-check-write sequences (capacity
    # claims, name uniqueness) then cannot interleave between threads or processes.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._local = threading.local()

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def guarded(self, guard: Callable[[Session], None]) -> Iterator[None]:
        """Run ``guard`` at the start of every transaction this thread opens inside the block
        (the leader's fencing check): if it raises, the transaction writes nothing."""
        previous = getattr(self._local, "guard", None)
        self._local.guard = guard
        try:
            yield
        finally:
            self._local.guard = previous

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed if the block ends normally, rolled back otherwise.

        Units of work do not nest: with SQLite each holds the write lock from its start, so a
        second one opened in the same thread would wait on the first forever. Code that needs the
        database inside a unit of work takes its session as an argument; this says so at once.
        """
        if getattr(self._local, "open", False):
            raise RuntimeError("a database session was opened inside another in the same thread")
        self._local.open = True
        session = self._sessions()
        try:
            guard = getattr(self._local, "guard", None)
            if guard is not None:
                guard(session)
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            self._local.open = False


def open_database(url: str) -> Database:
    database = Database(url)
    database.migrate()
    return database
