"""The importable API behind each command: what the CLI calls, and what scripts may call."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from migrate.engine import Migration, Progress, Report
from migrate.errors import MigrateError
from migrate.layers import LayerJob, LayerResult
from migrate.ledgerurl import default_url, sqlite_file
from migrate.legacy import LegacyRoot, check_driver, detect_driver
from migrate.lock import RootLock
from migrate.store import DryRunTarget, RealTarget

if TYPE_CHECKING:
    from migrate.ledger import Ledger, LedgerLayerCache, RunSummary
    from migrate.verify import Verification

log = logging.getLogger(__name__)


def open_root(root: str, driver: str = "auto") -> LegacyRoot:
    """The legacy root with its driver resolved (``auto`` picks the one present)."""
    root = os.path.abspath(root)
    chosen = detect_driver(root) if driver == "auto" else driver
    check_driver(root, chosen)
    return LegacyRoot(root, chosen)


class LedgerOpener:
    """A ledger to open when a run first needs it (issue 7).

    A SQLite ledger whose file does not exist yet holds no cached layers, so a run on it starts
    hashing at once and opens the ledger, with SQLAlchemy (the costliest import of a run), when
    the first layer result is recorded, while the other layers are still being hashed. Any
    other ledger is opened before hashing, because what it holds decides what is hashed.
    """

    def __init__(self, url: str, host: str | None = None) -> None:
        self.url = url
        self.host = host
        path = sqlite_file(url)
        self.fresh = path is not None and not os.path.exists(path)
        self._ledger: Ledger | None = None

    def open(self) -> Ledger:
        """The ledger, opened on the first call; raises LedgerError when it is unusable."""
        if self._ledger is None:
            from migrate.ledger import Ledger  # noqa: PLC0415 (the point of this class)

            self._ledger = Ledger(self.url, self.host)
        return self._ledger

    def close(self) -> None:
        """Close the ledger if it was opened."""
        if self._ledger is not None:
            self._ledger.close()


class _RunBook:
    """One run's record in the ledger, started at once or, on a fresh ledger, on first use."""

    def __init__(self, ledger: Ledger | LedgerOpener, legacy: LegacyRoot, mode: str) -> None:
        self._source = ledger
        self._legacy = legacy
        self._mode = mode
        self.ledger: Ledger | None = None
        self.run_id = 0
        self._cache: LedgerLayerCache | None = None
        if not isinstance(ledger, LedgerOpener) or not ledger.fresh:
            self.started()

    def started(self) -> Ledger:
        """The ledger, with this run's start recorded."""
        if self.ledger is None:
            source = self._source
            ledger = source.open() if isinstance(source, LedgerOpener) else source
            self.run_id = ledger.start_run(self._legacy.root, self._legacy.driver, self._mode)
            self._cache = ledger.layer_cache(self._legacy.root, self.run_id)
            self.ledger = ledger
        return self.ledger

    def cached_layer(self, job: LayerJob) -> LayerResult | None:
        """The ledger's result for ``job``; a ledger not opened yet is fresh and has none."""
        return None if self._cache is None else self._cache.cached_layer(job)

    def layer_done(self, job: LayerJob, result: LayerResult) -> None:
        self.started()
        assert self._cache is not None
        self._cache.layer_done(job, result)

    def failed(self, exc: BaseException) -> None:
        """Record the run as failed with ``exc``; a ledger that cannot be reached is logged."""
        try:
            ledger = self.started()
            ledger.end_run(self.run_id, "failed", migrated=0, skipped=0, hashed=0, message=str(exc))
        except MigrateError as error:
            log.warning("could not record the failed run in the ledger: %s", error)


def run_migration(
    legacy: LegacyRoot,
    *,
    dry_run: bool = False,
    jobs: int = 1,
    ledger: Ledger | LedgerOpener | None = None,
    progress: Progress | None = None,
) -> Report:
    """Migrate (or audit) ``legacy``; the run and its units are recorded in ``ledger``."""
    mode = "dry-run" if dry_run else "run"
    target = DryRunTarget(legacy.root) if dry_run else RealTarget(legacy.root)
    with nullcontext() if dry_run else RootLock(legacy.root):
        book = _RunBook(ledger, legacy, mode) if ledger is not None else None
        try:
            report = Migration(legacy, target, jobs=jobs, cache=book, progress=progress).run()
        except BaseException as exc:
            if book is not None:
                book.failed(exc)
            raise
        finally:
            if isinstance(target, DryRunTarget):
                target.close()
        if book is not None:
            _record(book.started(), legacy.root, book.run_id, report)
    return report


def _record(ledger: Ledger, root: str, run_id: int, report: Report) -> None:
    images = [
        (i.v1_id, str(i.image_id) if i.image_id else None, i.status, i.reason, " ".join(i.tags))
        for i in report.images.values()
    ]
    containers = [(c.container_id, c.status, c.reason) for c in report.containers]
    if not report.dry_run:
        ledger.record_images(root, run_id, images)
        ledger.record_containers(root, run_id, containers)
    skipped = len(report.skipped)
    ledger.end_run(
        run_id,
        "skipped" if skipped else "ok",
        migrated=len(report.images) - skipped,
        skipped=skipped,
        hashed=report.bytes_hashed,
        message="; ".join(f"{i.v1_id[:12]}: {i.reason}" for i in report.skipped)[:2000],
    )


@dataclass(frozen=True, slots=True)
class Status:
    """The last runs of a root and what is left to migrate there."""

    runs: list[RunSummary]
    legacy_images: int
    migrated: int
    remaining: list[str]


def status(legacy: LegacyRoot, ledger: Ledger) -> Status:
    """What the ledger knows of ``legacy``, compared with what is in its graph now."""
    ids, _ = legacy.image_ids() if legacy.has_graph() else ([], [])
    recorded = ledger.images(legacy.root)
    migrated = [v1 for v1 in ids if recorded.get(v1, (None, "", ""))[1] == "migrated"]
    remaining = [v1 for v1 in ids if v1 not in set(migrated)]
    return Status(ledger.runs(legacy.root), len(ids), len(migrated), remaining)


def check(legacy: LegacyRoot, *, content: bool = True) -> Verification:
    """Verify the migrated store of ``legacy``."""
    from migrate.verify import verify  # noqa: PLC0415 (runs need not import it)

    return verify(legacy, content=content)


__all__ = ["LedgerOpener", "check", "default_url", "open_root", "run_migration", "status"]
