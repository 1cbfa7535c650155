"""The database: one engine, sessions as units of work, migrations applied at open.

SQLite (the default) and PostgreSQL behave alike here: every unit of work has the database to
itself from its first statement, errors that mean "the database is not there" become
``DatabaseUnavailable``, and a database migrated by a newer flexvm is refused.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from flexvm.errors import DatabaseUnavailable, SchemaTooNew

MIGRATIONS = Path(__file__).parent / "migrations"
LOCK_WAIT_SECONDS = 30  # how long a unit of work waits for another to finish, on either backend
# A session that sits inside a transaction doing nothing this long is ended by PostgreSQL, its
# locks let go: a server frozen mid-transaction (SIGSTOP, a VM paused under it) would otherwise
# hold every other server's writes. No unit of work of flexvm waits on anything but the database.
IDLE_IN_TRANSACTION_SECONDS = 15
# The key of the PostgreSQL advisory lock that stands in for SQLite's write lock (any constant
# works; this one spells "flexvm" in ASCII).
SERIALISING_LOCK = 0x666C6578766D


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        # A naive value is taken as UTC here, not as the PostgreSQL session's zone.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        # SQLite forgets the zone; PostgreSQL answers in its session's zone, which need not be UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers (the API) go on while a writer (an operation) commits.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={LOCK_WAIT_SECONDS * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # Take over transaction control from pysqlite so BEGIN IMMEDIATE can be issued below.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    # Write lock at the start of every transaction: read-check-write sequences (capacity
    # claims, name uniqueness) then cannot interleave between threads or processes.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _postgresql_begin(conn: Any) -> None:
    # SQLite's BEGIN IMMEDIATE, for PostgreSQL: one unit of work at a time per database, across
    # threads and servers, taken at its start and released when it commits or rolls back. Locking
    # only the host rows would not do: some read-check-write sequences read before they lock (a
    # migration or resize chooses its destination from an unlocked snapshot and locks it after,
    # and no busy check locks the VM's row). Measured without this lock: 6 migrations at once to
    # a host with room for one were all accepted (tests/unit/test_placement_concurrency.py).
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SERIALISING_LOCK})")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def known_revisions() -> tuple[frozenset[str], str]:
    """Every revision this code knows, and the newest. Read once: loading the revision files costs
    about 0.1 s, which every server start and every test would otherwise pay again."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(script.revision for script in scripts.walk_revisions()), scripts.get_current_head() or "none"


class Database:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver flexvm ships
        self.url = parsed.render_as_string(hide_password=False)
        self.backend = parsed.get_backend_name()
        if self.backend == "sqlite":
            path = parsed.database or ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                parsed, connect_args={"check_same_thread": False, "timeout": LOCK_WAIT_SECONDS}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        elif self.backend == "postgresql":
            self.engine = create_engine(
                parsed,
                # A connection the server dropped (a restart) is noticed at checkout and replaced.
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": 10,
                    "options": f"-c lock_timeout={LOCK_WAIT_SECONDS}s "
                    f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_SECONDS}s",
                },
            )
            event.listen(self.engine, "begin", _postgresql_begin)
        else:
            self.engine = create_engine(parsed, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._local = threading.local()

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (the newest by default; idempotent). A database at a
        revision this code does not know was migrated by a newer flexvm: refuse it, change nothing."""
        known, newest = known_revisions()
        try:
            with self.engine.begin() as connection:
                current = MigrationContext.configure(connection).get_current_heads()
                for found in current:
                    if found not in known:
                        raise SchemaTooNew(found, newest)
                if revision == "head" and current == (newest,):
                    return  # already there
                config = alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
        except (DBAPIError, PoolTimeout) as err:
            if self._unreachable(err):
                raise self._unavailable(err) from err
            raise

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

        Units of work do not nest: each holds the database's write lock (SQLite) or flexvm's
        advisory lock (PostgreSQL) from its start, so a second one opened in the same thread would
        wait on the first forever. Code that needs the database inside a unit of work takes its
        session as an argument; this says so at once.

        A database that cannot be reached (or a lock not granted in time) raises
        ``DatabaseUnavailable``. Nothing is ever half-written: the transaction is rolled back (or,
        when the connection is lost during COMMIT itself, the server applies it whole or not at all).
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
        except (DBAPIError, PoolTimeout) as err:
            # A connection that failed cannot roll back either; the server drops its transaction.
            with contextlib.suppress(DBAPIError):
                session.rollback()
            if self._unreachable(err):
                raise self._unavailable(err) from err
            raise
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            self._local.open = False

    def _unreachable(self, err: DBAPIError | PoolTimeout) -> bool:
        """Whether ``err`` means the database is not there (or too busy), not a mistake in a query."""
        if isinstance(err, PoolTimeout) or err.connection_invalidated:
            return True
        if not isinstance(err, OperationalError | InterfaceError):
            return False
        if self.backend != "sqlite":
            return True
        # sqlite3 reports mistakes in SQL as OperationalError too ("no such table"): only a lock
        # not granted in time or a file it cannot use mean the database is unavailable.
        return str(err.orig).startswith(("database is locked", "unable to open database file", "disk I/O error"))

    def _unavailable(self, err: DBAPIError | PoolTimeout) -> DatabaseUnavailable:
        cause = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        return DatabaseUnavailable(
            f"the database is unavailable ({cause}); try again once it is back",
            details={"backend": self.backend, "cause": cause},
        )


def open_database(url: str) -> Database:
    database = Database(url)
    database.migrate()
    return database
