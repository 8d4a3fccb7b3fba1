"""The ``graph-migrate`` command line: parses options, draws progress, maps outcomes to exits.

Exit status: 0 when everything migrated (or verified), 1 when some images were skipped (the
rest migrated; each skipped one is named with its reason), 2 on a usage error or a fatal problem.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from migrate import __version__
from migrate.api import LedgerOpener, check, default_url, open_root, run_migration
from migrate.api import status as api_status
from migrate.engine import ImageReport, Report
from migrate.errors import MigrateError
from migrate.layers import LayerResult
from migrate.legacy import LegacyRoot

if TYPE_CHECKING:
    from migrate.ledger import Ledger

EXIT_OK, EXIT_SKIPPED, EXIT_FATAL = 0, 1, 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Migrate legacy (pre-1.10) Docker image storage to the content-addressable layout.",
)
log = logging.getLogger("migrate")

RootOption = Annotated[
    str, typer.Option("--root", help="The legacy Docker root.", show_default=True)
]
DriverOption = Annotated[
    str,
    typer.Option("--driver", help="Storage driver: auto, aufs, overlay, vfs or btrfs."),
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="SQLAlchemy URL of the ledger [default: sqlite under $XDG_STATE_HOME/graph-migrate].",
    ),
]
HostOption = Annotated[
    str | None,
    typer.Option("--host-id", help="This host's name in the ledger [default: hostname]."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
VerboseOption = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log.")]
QuietOption = Annotated[int, typer.Option("--quiet", "-q", count=True, help="Less output.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of failures.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"graph-migrate {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Migrate legacy (pre-1.10) Docker image storage to the content-addressable layout."""


def _setup_logging(verbose: int, quiet: int, *, tqdm: bool = False) -> None:
    level = logging.WARNING - 10 * verbose + 10 * quiet
    handler: logging.Handler = _TqdmHandler() if tqdm else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("graph-migrate: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(max(logging.DEBUG, min(level, logging.CRITICAL)))


def report_json(report: Report, *, dry_run: bool, seconds: float) -> dict[str, Any]:
    """The ``--json`` document of a run or dry run."""
    images = [
        {
            "v1_id": image.v1_id,
            "image_id": str(image.image_id) if image.image_id else None,
            "status": image.status,
            "reason": image.reason,
            "tags": image.tags,
        }
        for image in report.images.values()
    ]
    layers = [
        {
            "v1_id": layer.v1_id,
            "diff_id": str(layer.diff_id),
            "chain_id": str(layer.chain_id),
            "size": layer.size,
            "source": layer.source,
            "note": layer.note,
        }
        for layer in report.layers
    ]
    containers = [
        {"id": c.container_id, "status": c.status, "reason": c.reason} for c in report.containers
    ]
    totals = {
        "images": len(images),
        "migrated": sum(1 for i in images if i["status"] == "migrated"),
        "skipped": len(report.skipped),
        "layers": len(layers),
        "layers_regenerated": sum(1 for layer in layers if layer["source"] == "regenerated"),
        "bytes_hashed": report.bytes_hashed,
        "seconds": round(seconds, 3),
    }
    return {
        "dry_run": dry_run,
        "images": images,
        "layers": layers,
        "containers": containers,
        "dropped_tags": [
            {"name": name, "tag": tag, "reason": why} for name, tag, why in report.dropped_tags
        ],
        "problems": report.problems,
        "totals": totals,
    }


def _print_summary(report: Report, *, dry_run: bool, seconds: float) -> None:
    verb = "would migrate" if dry_run else "migrated"
    err = sys.stderr
    for image in report.images.values():
        if image.image_id is not None:
            tags = f" ({', '.join(image.tags)})" if image.tags else ""
            print(f"{verb} {image.v1_id[:12]} -> {image.image_id}{tags}", file=err)
    for image in report.skipped:
        print(f"skipped image {image.v1_id}: {image.reason}", file=err)
    for layer in report.layers:
        if layer.source == "regenerated":
            print(f"regenerated layer {layer.v1_id[:12]}: {layer.note}", file=err)
    for container in report.containers:
        if container.status != "migrated":
            print(f"skipped container {container.container_id}: {container.reason}", file=err)
    for name, tag, why in report.dropped_tags:
        print(f"dropped tag {name}:{tag}: {why}", file=err)
    for problem in report.problems:
        print(f"problem: {problem}", file=err)
    rate = report.bytes_hashed / seconds / 1e6 if seconds > 0 else 0.0
    migrated = len(report.images) - len(report.skipped)
    print(
        f"{verb} {migrated} of {len(report.images)} images, {len(report.layers)} layers; "
        f"hashed {report.bytes_hashed / 1e6:.1f} MB in {seconds:.2f} s ({rate:.0f} MB/s)",
        file=err,
    )


class _TqdmHandler(logging.Handler):
    """Writes log records above the progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


class _Bars:
    """tqdm bars for bytes hashed and images written."""

    def __init__(self, legacy: LegacyRoot) -> None:
        from tqdm import tqdm

        ids, _ = legacy.image_ids() if legacy.has_graph() else ([], [])
        total = sum(legacy.layer_size_hint(v1) for v1 in ids)
        self.hashed = tqdm(
            total=total or None, unit="B", unit_scale=True, desc="hashing", file=sys.stderr
        )
        self.images = tqdm(total=len(ids), unit="image", desc="images", file=sys.stderr)

    def layer_hashed(self, result: LayerResult) -> None:
        self.hashed.update(result.size)

    def image_done(self, report: ImageReport) -> None:
        self.images.update(1)

    def close(self) -> None:
        self.hashed.close()
        self.images.close()


def _fail(exc: MigrateError, debug: bool) -> NoReturn:
    if debug:
        raise exc
    print(f"graph-migrate: {exc}", file=sys.stderr)
    raise typer.Exit(EXIT_FATAL)


def _open_ledger(url: str | None, host_id: str | None) -> Ledger:
    from migrate.ledger import Ledger

    return Ledger(url or default_url(), host_id)


@app.command()
def run(
    root: RootOption = "/var/lib/docker",
    driver: DriverOption = "auto",
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Layers hashed at once (0: one per core).")
    ] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Audit only: plan and hash, change nothing.")
    ] = False,
    ledger: LedgerOption = None,
    host_id: HostOption = None,
    as_json: JsonOption = False,
    progress: Annotated[
        bool, typer.Option("--progress", help="Show progress bars even when not on a terminal.")
    ] = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = 0,
    debug: DebugOption = False,
) -> None:
    """Migrate the legacy root in place (or audit it with --dry-run)."""
    bars_wanted = (progress or sys.stderr.isatty()) and not quiet
    _setup_logging(verbose, quiet, tqdm=bars_wanted)
    started = time.monotonic()
    bars = None
    try:
        legacy = open_root(root, driver)
        book = LedgerOpener(ledger or default_url(), host_id)
        bars = _Bars(legacy) if bars_wanted else None
        try:
            report = run_migration(
                legacy,
                dry_run=dry_run,
                jobs=jobs or os.cpu_count() or 1,
                ledger=book,
                progress=bars,
            )
        finally:
            book.close()
            if bars is not None:
                bars.close()
    except MigrateError as exc:
        _fail(exc, debug)
    seconds = time.monotonic() - started
    if as_json:
        json.dump(report_json(report, dry_run=dry_run, seconds=seconds), sys.stdout, indent=1)
        sys.stdout.write("\n")
    if not quiet:
        _print_summary(report, dry_run=dry_run, seconds=seconds)
    raise typer.Exit(EXIT_SKIPPED if report.skipped else EXIT_OK)


@app.command()
def status(
    root: RootOption = "/var/lib/docker",
    driver: DriverOption = "auto",
    ledger: LedgerOption = None,
    host_id: HostOption = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show the last runs on a root and what remains to migrate."""
    try:
        legacy = open_root(root, driver)
        book = _open_ledger(ledger, host_id)
        try:
            state = api_status(legacy, book)
        finally:
            book.close()
    except MigrateError as exc:
        _fail(exc, debug)
    runs: list[dict[str, Any]] = [
        {
            "id": r.id,
            "host": r.host,
            "root": r.root,
            "driver": r.driver,
            "mode": r.mode,
            "started_at": r.started_at.isoformat() + "Z",
            "ended_at": r.ended_at.isoformat() + "Z" if r.ended_at else None,
            "outcome": r.outcome,
            "images_migrated": r.images_migrated,
            "images_skipped": r.images_skipped,
            "bytes_hashed": r.bytes_hashed,
            "message": r.message,
        }
        for r in state.runs[-10:]
    ]
    if as_json:
        document = {
            "root": legacy.root,
            "driver": legacy.driver,
            "runs": runs,
            "legacy_images": state.legacy_images,
            "migrated": state.migrated,
            "remaining": state.remaining,
        }
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    for r in runs:
        print(
            f"run {r['id']} {r['mode']:7} {r['started_at']} {r['outcome']:11} "
            f"migrated {r['images_migrated']} skipped {r['images_skipped']} "
            f"hashed {r['bytes_hashed'] / 1e6:.1f} MB"
        )
    print(
        f"{legacy.root} ({legacy.driver}): {state.migrated} of {state.legacy_images} legacy "
        f"images migrated, {len(state.remaining)} remaining"
    )


@app.command()
def verify(
    root: RootOption = "/var/lib/docker",
    driver: DriverOption = "auto",
    metadata_only: Annotated[
        bool,
        typer.Option("--metadata-only", help="Skip reassembling layer content (fast)."),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Re-check a migrated store: configs, layers (content too), chains, mounts and tags."""
    try:
        legacy = open_root(root, driver)
        result = check(legacy, content=not metadata_only)
    except MigrateError as exc:
        _fail(exc, debug)
    for problem in result.problems:
        print(problem)
    verdict = "ok" if result.ok else f"{len(result.problems)} problem(s)"
    print(f"verified {result.images} images and {result.layers} layers: {verdict}", file=sys.stderr)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_SKIPPED)


def main() -> None:
    """Console-script entry point."""
    app()
