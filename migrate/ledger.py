"""The ledger: a SQLAlchemy record of every run and every unit of work, per host and root.

SQLite by default (``$XDG_STATE_HOME/graph-migrate/ledger.db``); any SQLAlchemy URL works, and a
shared PostgreSQL ledger (``postgresql+psycopg://``) lets a fleet report to one place. The ledger
is a record and a cache, never the truth: the migrated store on the host is. A unit is recorded
only once its files are durably in place, so after a crash the ledger may lag the store but never
lead it.

Concurrency: every row is keyed by host and root, and one run at a time holds a root (its
:class:`~migrate.lock.RootLock`), so hosts sharing a ledger never write the same rows. Every
transaction is short and writes with ``INSERT ... ON CONFLICT DO UPDATE``, which takes row locks
only: on PostgreSQL hosts never wait for each other. SQLite serialises writers on its file lock
(``BEGIN IMMEDIATE``, waiting up to 30 s), which is enough for the hosts of one machine.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    false,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from migrate.digest import ChainID, DiffID
from migrate.errors import MigrateError
from migrate.faults import checkpoint
from migrate.layers import LayerJob, LayerResult

if TYPE_CHECKING:
    from migrate.engine import ImageReport

SCHEMA_VERSION = 2

HASHED, REGISTERED = "hashed", "registered"

# The PostgreSQL advisory lock every host takes to create or upgrade the schema ("gmledger").
SCHEMA_LOCK = int.from_bytes(b"gmledger", "big")

log = logging.getLogger(__name__)


class LedgerError(MigrateError):
    """The ledger database cannot be used."""


def default_url() -> str:
    """The default ledger: SQLite under the XDG state directory."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return f"sqlite:///{os.path.join(state, 'graph-migrate', 'ledger.db')}"


def default_host_id() -> str:
    return socket.gethostname()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    root: Mapped[str] = mapped_column(String(4096))
    driver: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))  # "run" or "dry-run"
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))  # running, ok, skipped, failed, interrupted
    images_migrated: Mapped[int] = mapped_column(Integer, default=0)
    images_skipped: Mapped[int] = mapped_column(Integer, default=0)
    bytes_hashed: Mapped[int] = mapped_column(BigInteger, default=0)
    message: Mapped[str] = mapped_column(Text, default="")


class LayerRow(Base):
    __tablename__ = "layers"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    root: Mapped[str] = mapped_column(String(4096), primary_key=True)
    v1_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(255))
    diff_id: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))
    tar_split_path: Mapped[str] = mapped_column(Text)
    bytes_hashed: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime)
    # Schema version 2:
    # Server defaults as the upgrade step adds them, so a ledger created whole and an upgraded
    # one have the same schema.
    state: Mapped[str] = mapped_column(String(16), default=HASHED, server_default=HASHED)
    chain_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    integrity_failed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ImageRow(Base):
    __tablename__ = "images"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    root: Mapped[str] = mapped_column(String(4096), primary_key=True)
    v1_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    image_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[int] = mapped_column(Integer)


class ContainerRow(Base):
    __tablename__ = "containers"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    root: Mapped[str] = mapped_column(String(4096), primary_key=True)
    container_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[int] = mapped_column(Integer)


class TagRow(Base):
    """A reference written to ``repositories.json`` (schema version 2)."""

    __tablename__ = "tags"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    root: Mapped[str] = mapped_column(String(4096), primary_key=True)
    reference: Mapped[str] = mapped_column(String(1024), primary_key=True)
    image_id: Mapped[str] = mapped_column(String(80))
    run_id: Mapped[int] = mapped_column(Integer)


def _create_schema(connection: Connection) -> None:
    Base.metadata.create_all(connection, checkfirst=True)


def _add_unit_states(connection: Connection) -> None:
    """Version 2: layer states and chain IDs, integrity failures, the tags table.

    A ledger created whole at version 2 already has them (step 1 creates the current models),
    so each column is added only where it is missing.
    """
    Base.metadata.create_all(connection, checkfirst=True)
    present = {column["name"] for column in inspect(connection).get_columns("layers")}
    added = (
        ("state", "VARCHAR(16) NOT NULL DEFAULT 'hashed'"),
        ("chain_id", "VARCHAR(80)"),
        ("integrity_failed", "BOOLEAN NOT NULL DEFAULT false"),
    )
    for name, definition in added:
        if name not in present:
            connection.execute(text(f"ALTER TABLE layers ADD COLUMN {name} {definition}"))


# Each step upgrades the schema from version N-1 to N, inside the locked upgrade transaction.
_UPGRADES: Sequence[Callable[[Connection], None]] = (_create_schema, _add_unit_states)


def fingerprint(job: LayerJob) -> str:
    """What must not have changed for a recorded layer result to still hold."""
    parts = []
    for name in ("json", "tar-data.json.gz"):
        try:
            st = os.stat(os.path.join(job.root, "graph", job.v1_id, name))
            parts.append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
        except FileNotFoundError:
            parts.append("-")
    return f"{job.driver}|{job.parent_v1_id}|{'|'.join(parts)}"


@dataclass(frozen=True, slots=True)
class RunSummary:
    id: int
    host: str
    root: str
    driver: str
    mode: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    outcome: str
    images_migrated: int
    images_skipped: int
    bytes_hashed: int
    message: str

    @property
    def seconds(self) -> float | None:
        """How long the run took, or None while it has not ended."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def state(self) -> str:
        """Where this run leaves its root, in fleet terms.

        ``migrated`` (every image), ``partial`` (some images skipped), ``audited`` (a dry run
        finished), ``running``, ``failed`` or ``interrupted`` (its process or connection died).
        """
        if self.outcome not in ("ok", "skipped"):
            return self.outcome
        if self.mode == "dry-run":
            return "audited"
        return "migrated" if self.outcome == "ok" else "partial"


def _summary(row: RunRow) -> RunSummary:
    return RunSummary(
        row.id,
        row.host,
        row.root,
        row.driver,
        row.mode,
        row.started_at,
        row.ended_at,
        row.outcome,
        row.images_migrated,
        row.images_skipped,
        row.bytes_hashed,
        row.message,
    )


class Ledger:
    """A ledger database, opened for one host."""

    def __init__(self, url: str, host: str | None = None) -> None:
        self.url = _normalise_url(url)
        self.host = host or default_host_id()
        try:
            self.engine = _create_engine(self.url, self.host)
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
            self._upgrade()
        except OSError as exc:
            raise LedgerError(f"ledger {_safe_url(url)}: {exc.strerror}: {exc.filename}") from exc
        except ImportError as exc:
            raise LedgerError(
                f"ledger {_safe_url(url)}: its database driver is missing ({exc.name}); "
                "for PostgreSQL install graph-migrate[postgres]"
            ) from exc
        except SQLAlchemyError as exc:
            raise _ledger_error(url, exc) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction; database failures (a lost connection too) surface as LedgerError."""
        try:
            with self._sessions.begin() as session:
                yield session
                checkpoint("ledger-commit")
        except SQLAlchemyError as exc:
            raise _ledger_error(self.url, exc) from exc

    def _upgrade(self) -> None:
        """Create or upgrade the schema; safe when many hosts start at once.

        A ledger already at this version is only read. Otherwise the upgrade runs in one
        transaction under a lock every host takes first (a PostgreSQL advisory lock; SQLite's
        write lock), and re-reads the version once it holds it, so exactly one host applies
        each step and the others find the work done.
        """
        with self.engine.connect() as connection:
            current = _schema_version(connection)
        if current == SCHEMA_VERSION:
            return
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            current = _schema_version(connection)
            if current > SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger {_safe_url(self.url)} has schema version {current}, newer than "
                    f"this graph-migrate ({SCHEMA_VERSION}); upgrade graph-migrate"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                _UPGRADES[version - 1](connection)
                connection.execute(
                    cast(Table, SchemaVersion.__table__).insert().values(version=version)
                )
                log.info("upgraded ledger %s to schema version %d", _safe_url(self.url), version)

    # -- runs -------------------------------------------------------------------------------

    def start_run(self, root: str, driver: str, mode: str) -> int:
        """Record a run's start; earlier runs of this root still 'running' were interrupted."""
        with self.session() as session:
            if mode == "run":
                session.execute(
                    update(RunRow)
                    .where(RunRow.host == self.host, RunRow.root == root)
                    .where(RunRow.outcome == "running", RunRow.mode == "run")
                    .values(outcome="interrupted")
                )
            row = RunRow(
                host=self.host,
                root=root,
                driver=driver,
                mode=mode,
                pid=os.getpid(),
                started_at=_now(),
                outcome="running",
                message="",
                images_migrated=0,
                images_skipped=0,
                bytes_hashed=0,
            )
            session.add(row)
            session.flush()
            return row.id

    def end_run(
        self, run_id: int, outcome: str, *, migrated: int, skipped: int, hashed: int, message: str
    ) -> None:
        with self.session() as session:
            session.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(
                    outcome=outcome,
                    ended_at=_now(),
                    images_migrated=migrated,
                    images_skipped=skipped,
                    bytes_hashed=hashed,
                    message=message,
                )
            )

    def fleet(self, root: str | None = None) -> list[RunSummary]:
        """The last run of every host and root in the ledger (of ``root`` only, when given)."""
        last = select(func.max(RunRow.id)).group_by(RunRow.host, RunRow.root)
        if root is not None:
            last = last.where(RunRow.root == root)
        query = select(RunRow).where(RunRow.id.in_(last)).order_by(RunRow.host, RunRow.root)
        with self.session() as session:
            return [_summary(row) for row in session.scalars(query)]

    def runs(self, root: str | None = None, *, all_hosts: bool = False) -> list[RunSummary]:
        with self.session() as session:
            query = select(RunRow).order_by(RunRow.id)
            if not all_hosts:
                query = query.where(RunRow.host == self.host)
            if root is not None:
                query = query.where(RunRow.root == root)
            return [_summary(row) for row in session.scalars(query)]

    # -- units ------------------------------------------------------------------------------

    def layer_cache(self, root: str, run_id: int, *, record: bool = True) -> LedgerLayerCache:
        """The engine's view of this root's units; ``record=False`` only reads (dry runs)."""
        return LedgerLayerCache(self, root, run_id, record=record)

    def record_images(
        self, root: str, run_id: int, images: Sequence[tuple[str, str | None, str, str, str]]
    ) -> None:
        """Make the root's image rows exactly (v1 ID, image ID, state, reason, tags) of a run.

        Rows of images no longer in the legacy root are deleted, so the ledger follows the
        root even after runs it missed.
        """
        rows = [
            {"v1_id": v1_id, "image_id": image_id, "state": state, "reason": reason, "tags": tags}
            for v1_id, image_id, state, reason, tags in sorted(images)
        ]
        with self.session() as session:
            self._replace(session, ImageRow, "v1_id", root, run_id, rows)

    def record_containers(
        self, root: str, run_id: int, containers: Sequence[tuple[str, str, str]]
    ) -> None:
        """Make the root's container rows exactly (container ID, state, reason) of a run."""
        rows = [
            {"container_id": container_id, "state": state, "reason": reason}
            for container_id, state, reason in sorted(containers)
        ]
        with self.session() as session:
            self._replace(session, ContainerRow, "container_id", root, run_id, rows)

    def _replace(
        self,
        session: Session,
        model: type[Base],
        key: str,
        root: str,
        run_id: int,
        rows: list[dict[str, Any]],
    ) -> None:
        """Upsert ``rows`` of this host and root, and delete its other rows of ``model``."""
        table = cast(Table, model.__table__)
        keep = [row[key] for row in rows]
        stale = delete(table).where(table.c.host == self.host, table.c.root == root)
        session.execute(stale.where(table.c[key].not_in(keep)) if keep else stale)
        if rows:
            _upsert(
                session,
                table,
                [{**row, "host": self.host, "root": root, "run_id": run_id} for row in rows],
            )

    def record_tags(self, root: str, run_id: int, tags: Sequence[tuple[str, str]]) -> None:
        """Make the root's tag rows exactly the (reference, image ID) of ``repositories.json``."""
        rows = [
            {"reference": reference, "image_id": image_id} for reference, image_id in sorted(tags)
        ]
        with self.session() as session:
            self._replace(session, TagRow, "reference", root, run_id, rows)

    def tags(self, root: str) -> dict[str, str]:
        """Reference -> image ID as last recorded for ``root``."""
        with self.session() as session:
            rows = session.scalars(
                select(TagRow).where(TagRow.host == self.host, TagRow.root == root)
            )
            return {row.reference: row.image_id for row in rows}

    def containers(self, root: str) -> dict[str, tuple[str, str]]:
        """Container ID -> (state, reason) as last recorded for ``root``."""
        with self.session() as session:
            rows = session.scalars(
                select(ContainerRow).where(
                    ContainerRow.host == self.host, ContainerRow.root == root
                )
            )
            return {row.container_id: (row.state, row.reason) for row in rows}

    def layers(self, root: str) -> dict[str, tuple[str, str | None]]:
        """v1 ID -> (state, chain ID) of every layer recorded for ``root``."""
        with self.session() as session:
            rows = session.scalars(
                select(LayerRow).where(LayerRow.host == self.host, LayerRow.root == root)
            )
            return {row.v1_id: (row.state, row.chain_id) for row in rows}

    def images(self, root: str) -> dict[str, tuple[str | None, str, str]]:
        """v1 ID -> (image ID, state, reason) as last recorded for ``root``."""
        with self.session() as session:
            rows = session.scalars(
                select(ImageRow).where(ImageRow.host == self.host, ImageRow.root == root)
            )
            return {row.v1_id: (row.image_id, row.state, row.reason) for row in rows}

    def layer_count(self, root: str) -> int:
        with self.session() as session:
            query = select(func.count()).select_from(LayerRow)
            query = query.where(LayerRow.host == self.host, LayerRow.root == root)
            return session.scalar(query) or 0

    def close(self) -> None:
        self.engine.dispose()


class LedgerLayerCache:
    """The engine's layer cache, backed by the ledger's layers table."""

    def __init__(self, ledger: Ledger, root: str, run_id: int, *, record: bool = True) -> None:
        self.ledger = ledger
        self.root = root
        self.run_id = run_id
        self.record = record

    def cached_layer(self, job: LayerJob) -> LayerResult | None:
        with self.ledger.session() as session:
            row = session.get(LayerRow, (self.ledger.host, self.root, job.v1_id))
            if row is None or row.fingerprint != fingerprint(job):
                return None
            if not os.path.exists(row.tar_split_path):
                return None  # a regenerated stream was cleaned up: regenerate it again
            return LayerResult(
                job.v1_id,
                DiffID.parse(row.diff_id),
                row.size,
                row.source,
                row.tar_split_path,
                row.bytes_hashed,
                row.seconds,
                row.note,
                bool(row.integrity_failed),
            )

    def layer_done(self, job: LayerJob, result: LayerResult) -> None:
        if not self.record:
            return
        row = {
            "host": self.ledger.host,
            "root": self.root,
            "v1_id": job.v1_id,
            "fingerprint": fingerprint(job),
            "diff_id": str(result.diff_id),
            "size": result.size,
            "source": result.source,
            "tar_split_path": result.tar_split_path,
            "bytes_hashed": result.bytes_hashed,
            "seconds": result.seconds,
            "note": result.note,
            "run_id": self.run_id,
            "updated_at": _now(),
            "state": HASHED,
            "chain_id": None,
            "integrity_failed": result.integrity_failed,
        }
        with self.ledger.session() as session:
            _upsert(session, cast(Table, LayerRow.__table__), [row])

    def layer_registered(self, v1_id: str, chain: ChainID, tar_split_path: str) -> None:
        """Mark the layer registered; later runs replay its tar-split from the layerdb copy."""
        if not self.record:
            return
        with self.ledger.session() as session:
            session.execute(
                update(LayerRow)
                .where(LayerRow.host == self.ledger.host, LayerRow.root == self.root)
                .where(LayerRow.v1_id == v1_id)
                .values(
                    state=REGISTERED,
                    chain_id=str(chain),
                    tar_split_path=tar_split_path,
                    updated_at=_now(),
                )
            )

    def image_done(self, report: ImageReport) -> None:
        if not self.record:
            return
        row = {
            "host": self.ledger.host,
            "root": self.root,
            "v1_id": report.v1_id,
            "image_id": str(report.image_id) if report.image_id else None,
            "state": report.status,
            "reason": report.reason,
            "tags": " ".join(report.tags),
            "run_id": self.run_id,
        }
        # One image as it is created; the run's end replaces the whole set (record_images).
        with self.ledger.session() as session:
            _upsert(session, cast(Table, ImageRow.__table__), [row])


def _upsert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, or update those whose primary key exists, in one statement.

    ``INSERT ... ON CONFLICT DO UPDATE`` is atomic where a read-then-write merge races: two
    writers of one key never fail on the unique index, and nothing wider than the row is locked.
    """
    keys = [column.name for column in table.primary_key.columns]
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        for row in rows:
            found = session.execute(
                update(table).where(*(table.c[k] == row[k] for k in keys)).values(row)
            )
            if not cast(Any, found).rowcount:
                session.execute(table.insert().values(row))
        return
    # Imported here: a host loads only the dialect of the database it uses.
    insert: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql  # noqa: PLC0415

        insert = postgresql.insert(table)
    else:
        from sqlalchemy.dialects import sqlite  # noqa: PLC0415

        insert = sqlite.insert(table)
    changed = {name: insert.excluded[name] for name in rows[0] if name not in keys}
    session.execute(insert.on_conflict_do_update(index_elements=keys, set_=changed), rows)


def _schema_version(connection: Connection) -> int:
    if not inspect(connection).has_table(SchemaVersion.__tablename__):
        return 0
    return connection.scalar(select(func.max(SchemaVersion.version))) or 0


def _normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3, the driver graph-migrate ships for."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def _create_engine(url: str, host: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url, host))


def _connect_args(url: str, host: str) -> dict[str, Any]:
    """libpq settings for a fleet host, unless the URL sets them itself.

    The host is named in ``pg_stat_activity``, connecting gives up after 10 s, and keepalives
    notice a server that vanished without closing the connection.
    """
    if make_url(url).get_backend_name() != "postgresql":
        return {}
    wanted = {
        "application_name": f"graph-migrate {host}"[:63],
        "connect_timeout": 10,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    given: Mapping[str, object] = make_url(url).query
    return {name: value for name, value in wanted.items() if name not in given}


def _sqlite_connect(dbapi_connection: Any, record: object) -> None:
    # Let SQLAlchemy's "begin" event open transactions instead of pysqlite's implicit BEGIN.
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Connection) -> None:
    # Take the write lock up front: a deferred transaction that reads, then writes, can fail
    # at once with "database is locked" instead of waiting its turn.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, location = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{location}"
    return url


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _ledger_error(url: str, exc: SQLAlchemyError) -> LedgerError:
    """One line naming the ledger and the database's own words (no SQL, no traceback)."""
    cause = _first_line(exc.orig or exc) if isinstance(exc, DBAPIError) else _first_line(exc)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return LedgerError(f"ledger {_safe_url(url)}: connection lost: {cause}")
    return LedgerError(f"ledger {_safe_url(url)}: {cause}")
