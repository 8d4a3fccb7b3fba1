"""The ledger: a SQLAlchemy record of every run and every unit of work, per host and root.

SQLite by default (``$XDG_STATE_HOME/graph-migrate/ledger.db``); any SQLAlchemy URL works, and a
shared PostgreSQL ledger lets a fleet report to one place. The ledger is a record and a cache,
never the truth: the migrated store on the host is. A unit is recorded only once its files are
durably in place, so after a crash the ledger may lag the store but never lead it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from migrate.digest import DiffID
from migrate.errors import MigrateError
from migrate.faults import checkpoint
from migrate.layers import LayerJob, LayerResult
from migrate.ledgerurl import default_host_id
from migrate.ledgerurl import default_url as default_url  # noqa: PLC0414 (re-exported)

SCHEMA_VERSION = 1


class LedgerError(MigrateError):
    """The ledger database cannot be used."""


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


# Each step upgrades the schema from version N-1 to N; step 1 creates it.
_UPGRADES: Sequence[str] = ("create",)


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
        self.url = url
        self.host = host or default_host_id()
        try:
            self.engine = _create_engine(url)
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
            self._upgrade()
        except OSError as exc:
            raise LedgerError(f"ledger {_safe_url(url)}: {exc.strerror}: {exc.filename}") from exc
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger {_safe_url(url)}: {_first_line(exc)}") from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction; database failures surface as LedgerError."""
        try:
            with self._sessions.begin() as session:
                yield session
                checkpoint("ledger-commit")
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger {_safe_url(self.url)}: {_first_line(exc)}") from exc

    def _upgrade(self) -> None:
        """Create or upgrade the schema; safe when many hosts start at once."""
        Base.metadata.create_all(self.engine, checkfirst=True)
        with self._sessions.begin() as session:
            current = session.scalar(select(func.max(SchemaVersion.version))) or 0
            if current > SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger {_safe_url(self.url)} has schema version {current}, newer than "
                    f"this graph-migrate ({SCHEMA_VERSION}); upgrade graph-migrate"
                )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            try:
                with self._sessions.begin() as session:
                    session.add(SchemaVersion(version=version))
            except IntegrityError:
                pass  # another host recorded this step at the same moment

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

    def runs(self, root: str | None = None, *, all_hosts: bool = False) -> list[RunSummary]:
        with self.session() as session:
            query = select(RunRow).order_by(RunRow.id)
            if not all_hosts:
                query = query.where(RunRow.host == self.host)
            if root is not None:
                query = query.where(RunRow.root == root)
            return [_summary(row) for row in session.scalars(query)]

    # -- units ------------------------------------------------------------------------------

    def layer_cache(self, root: str, run_id: int) -> LedgerLayerCache:
        return LedgerLayerCache(self, root, run_id)

    def record_images(
        self, root: str, run_id: int, images: Sequence[tuple[str, str | None, str, str, str]]
    ) -> None:
        """Record (v1 ID, image ID, state, reason, tags) for each image of a run."""
        with self.session() as session:
            for v1_id, image_id, state, reason, tags in images:
                session.merge(
                    ImageRow(
                        host=self.host,
                        root=root,
                        v1_id=v1_id,
                        image_id=image_id,
                        state=state,
                        reason=reason,
                        tags=tags,
                        run_id=run_id,
                    )
                )

    def record_containers(
        self, root: str, run_id: int, containers: Sequence[tuple[str, str, str]]
    ) -> None:
        with self.session() as session:
            for container_id, state, reason in containers:
                session.merge(
                    ContainerRow(
                        host=self.host,
                        root=root,
                        container_id=container_id,
                        state=state,
                        reason=reason,
                        run_id=run_id,
                    )
                )

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

    def __init__(self, ledger: Ledger, root: str, run_id: int) -> None:
        self.ledger = ledger
        self.root = root
        self.run_id = run_id

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
            )

    def layer_done(self, job: LayerJob, result: LayerResult) -> None:
        with self.ledger.session() as session:
            session.merge(
                LayerRow(
                    host=self.ledger.host,
                    root=self.root,
                    v1_id=job.v1_id,
                    fingerprint=fingerprint(job),
                    diff_id=str(result.diff_id),
                    size=result.size,
                    source=result.source,
                    tar_split_path=result.tar_split_path,
                    bytes_hashed=result.bytes_hashed,
                    seconds=result.seconds,
                    note=result.note,
                    run_id=self.run_id,
                    updated_at=_now(),
                )
            )


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url, pool_pre_ping=True)


def _safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, location = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{location}"
    return url


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
