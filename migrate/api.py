"""The importable API behind each command: what the CLI calls, and what scripts may call."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from migrate.engine import Migration, Progress, Report
from migrate.legacy import LegacyRoot, check_driver, detect_driver
from migrate.lock import RootLock, is_held
from migrate.resync import ResyncingCache, StoreLayers
from migrate.store import DryRunTarget, RealTarget

# The ledger (SQLAlchemy), verification and export are imported where they are used: every
# command pays for the imports of this module, and most need only one of them (issue 7).
if TYPE_CHECKING:
    from migrate.export import ExportReport
    from migrate.ledger import Ledger, RunSummary
    from migrate.verify import Verification

log = logging.getLogger(__name__)


def open_root(root: str, driver: str = "auto") -> LegacyRoot:
    """The legacy root with its driver resolved (``auto`` picks the one present)."""
    root = os.path.abspath(root)
    chosen = detect_driver(root) if driver == "auto" else driver
    check_driver(root, chosen)
    return LegacyRoot(root, chosen)


def run_migration(
    legacy: LegacyRoot,
    *,
    dry_run: bool = False,
    jobs: int = 1,
    ledger: Ledger | None = None,
    progress: Progress | None = None,
) -> Report:
    """Migrate (or audit) ``legacy``; the run and its units are recorded in ``ledger``.

    Layers the ledger does not know but the store holds are recognised there and recorded
    (:mod:`migrate.resync`). When the ledger fails mid-run (a lost connection), the run stops
    with that :class:`LedgerError`; the next run of the root resumes from the store.
    """
    mode = "dry-run" if dry_run else "run"
    target = DryRunTarget(legacy.root) if dry_run else RealTarget(legacy.root)
    with nullcontext() if dry_run else RootLock(legacy.root):
        run_id = ledger.start_run(legacy.root, legacy.driver, mode) if ledger else 0
        # A dry run reads what real runs recorded but records nothing: none of its units is
        # in place.
        cache = None
        if ledger:
            recorded = ledger.layer_cache(legacy.root, run_id, record=not dry_run)
            cache = ResyncingCache(recorded, StoreLayers(legacy))
        try:
            report = Migration(legacy, target, jobs=jobs, cache=cache, progress=progress).run()
        except BaseException as exc:
            if ledger:
                _record_failure(ledger, run_id, exc)
            raise
        finally:
            if isinstance(target, DryRunTarget):
                target.close()
        if ledger:
            _record(ledger, legacy.root, run_id, report)
    return report


def _record_failure(ledger: Ledger, run_id: int, exc: BaseException) -> None:
    """Mark the run failed if the ledger still answers; else the next run marks it interrupted."""
    from migrate.ledger import LedgerError  # noqa: PLC0415 (only a ledger's user needs it)

    try:
        ledger.end_run(run_id, "failed", migrated=0, skipped=0, hashed=0, message=str(exc))
    except LedgerError as lost:
        log.debug("run %d left running in the ledger: %s", run_id, lost)


def _record(ledger: Ledger, root: str, run_id: int, report: Report) -> None:
    images = [
        (i.v1_id, str(i.image_id) if i.image_id else None, i.status, i.reason, " ".join(i.tags))
        for i in report.images.values()
    ]
    containers = [(c.container_id, c.status, c.reason) for c in report.containers]
    tags = [(ref, str(i.image_id)) for i in report.images.values() if i.image_id for ref in i.tags]
    if not report.dry_run:
        ledger.record_images(root, run_id, images)
        ledger.record_containers(root, run_id, containers)
        ledger.record_tags(root, run_id, tags)
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
    runs = ledger.runs(legacy.root)
    if not is_held(legacy.root):
        # A run still "running" with nobody holding the lock was killed before it could say so.
        runs = [
            replace(run, outcome="interrupted")
            if run.outcome == "running" and run.mode == "run"
            else run
            for run in runs
        ]
    return Status(runs, len(ids), len(migrated), remaining)


def fleet_status(ledger: Ledger, root: str | None = None) -> list[RunSummary]:
    """The last run of every host (and root) reporting to ``ledger``, by host then root.

    ``root`` keeps only the runs on that path, as each host recorded it.
    """
    return ledger.fleet(root)


def check(legacy: LegacyRoot, *, content: bool = True) -> Verification:
    """Verify the migrated store of ``legacy``."""
    from migrate.verify import verify  # noqa: PLC0415

    return verify(legacy, content=content)


def export(
    legacy: LegacyRoot,
    images: list[str],
    *,
    oci: str | None = None,
    docker_archive: str | None = None,
    compress: str | None = None,
    jobs: int = 1,
) -> ExportReport:
    """Export ``images`` of ``legacy`` to an OCI layout or a docker archive (see migrate.export).

    Reads legacy data only, whether or not the root was migrated in place; writes only the output.
    """
    from migrate.export import export_images  # noqa: PLC0415

    return export_images(
        legacy,
        images,
        oci_layout=oci,
        docker_archive=docker_archive,
        compress=compress,
        jobs=jobs,
    )


def default_url() -> str:
    """The default ledger URL: SQLite under the XDG state directory."""
    from migrate.ledger import default_url as ledger_default_url  # noqa: PLC0415

    return ledger_default_url()


__all__ = [
    "check",
    "default_url",
    "export",
    "fleet_status",
    "open_root",
    "run_migration",
    "status",
]
