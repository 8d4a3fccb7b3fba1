"""The ``graph-migrate`` command line: parses options, draws progress, maps outcomes to exits.

Exit status: 0 when everything migrated (or verified), 1 when some images, containers or the tag
file were skipped (the rest migrated; each skipped one is named with its reason), 2 on a usage
error or a fatal problem (a full disk, a read-only target).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from migrate import __version__
from migrate.api import check, fleet_status, open_root, run_migration
from migrate.api import export as api_export
from migrate.api import status as api_status
from migrate.engine import ImageReport, Report
from migrate.errors import MigrateError
from migrate.layers import LayerResult
from migrate.legacy import LegacyRoot

if TYPE_CHECKING:
    from migrate.ledger import Ledger, RunSummary

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
            "integrity_failed": layer.integrity_failed,
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
        "layers_integrity_failed": sum(1 for layer in report.layers if layer.integrity_failed),
        "bytes_hashed": report.bytes_hashed,
        "bytes_to_hash": report.bytes_hashed,
        "hash_rate": round(_rate(report)),
        "estimated_seconds": round(_estimate(report), 3),
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
        "ignored": [f"graph/{name}" for name in report.ignored_entries],
        "totals": totals,
    }


def _rate(report: Report) -> float:
    """Bytes hashed per second of the hashing phase (all workers together)."""
    return report.bytes_hashed / report.hash_seconds if report.hash_seconds > 0 else 0.0


def _estimate(report: Report) -> float:
    """Seconds a run needs to hash what this one hashed (layers no run has recorded yet)."""
    rate = _rate(report)
    return report.bytes_hashed / rate if rate else 0.0


def _object_lines(report: Report, *, dry_run: bool) -> Iterator[str]:
    """One line per image, layer, container, tag or entry the summary must name."""
    verb = "would migrate" if dry_run else "migrated"
    for image in report.images.values():
        if image.image_id is not None:
            tags = f" ({', '.join(image.tags)})" if image.tags else ""
            yield f"{verb} {image.v1_id[:12]} -> {image.image_id}{tags}"
    for image in report.skipped:
        yield f"skipped image {image.v1_id}: {image.reason}"
    yield from _layer_lines(report, dry_run=dry_run)
    for container in report.containers:
        if container.status != "migrated":
            yield f"skipped container {container.container_id}: {container.reason}"
    for name, tag, why in report.dropped_tags:
        yield f"dropped tag {name}:{tag}: {why}"
    for problem in report.problems:
        yield f"problem: {problem}"
    for name in report.ignored_entries:
        if name != "_tmp":  # Docker's own scratch directory, present on every legacy host
            yield f"ignored graph/{name}: not an image ID"


def _layer_lines(report: Report, *, dry_run: bool) -> Iterator[str]:
    regenerate = "would regenerate" if dry_run else "regenerated"
    for layer in report.layers:
        if layer.integrity_failed:
            yield f"layer {layer.v1_id} failed its integrity check: {layer.note}"
    for layer in report.layers:
        if layer.source == "regenerated":
            yield f"{regenerate} layer {layer.v1_id[:12]}: {layer.note}"


def _print_summary(report: Report, *, dry_run: bool, seconds: float) -> None:
    verb = "would migrate" if dry_run else "migrated"
    regenerate = "would regenerate" if dry_run else "regenerated"
    err = sys.stderr
    for line in _object_lines(report, dry_run=dry_run):
        print(line, file=err)
    migrated = len(report.images) - len(report.skipped)
    regenerated = sum(1 for layer in report.layers if layer.source == "regenerated")
    failed = sum(1 for layer in report.layers if layer.integrity_failed)
    print(
        f"{verb} {migrated} of {len(report.images)} images, {len(report.layers)} layers "
        f"({regenerated} {regenerate}, {failed} failed the integrity check); "
        f"hashed {report.bytes_hashed / 1e6:.1f} MB in {seconds:.2f} s "
        f"({_rate(report) / 1e6:.0f} MB/s)",
        file=err,
    )
    if dry_run:
        print(
            f"a real run hashes {report.bytes_hashed / 1e6:.1f} MB: "
            f"about {_estimate(report):.1f} s at the measured rate",
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

    def layer_cached(self, result: LayerResult) -> None:
        """Take a layer an earlier run hashed out of what is left to hash."""
        if self.hashed.total:
            self.hashed.total = max(self.hashed.n, self.hashed.total - result.size)
            self.hashed.refresh()

    def image_done(self, report: ImageReport) -> None:
        self.images.update(1)

    def close(self) -> None:
        self.hashed.close()
        self.images.close()


def _fail(exc: MigrateError | OSError, debug: bool) -> NoReturn:
    if debug:
        raise exc
    if isinstance(exc, OSError):
        # Not anticipated where it happened (the lock file on a read-only root, say): still
        # one line, naming the file and the cause.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"graph-migrate: {where}{exc.strerror or exc}", file=sys.stderr)
    else:
        print(f"graph-migrate: {exc}", file=sys.stderr)
    raise typer.Exit(EXIT_FATAL)


def _open_ledger(url: str | None, host_id: str | None) -> Ledger:
    from migrate.ledger import Ledger, default_url

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
        book = _open_ledger(ledger, host_id)
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
    except (MigrateError, OSError) as exc:
        _fail(exc, debug)
    seconds = time.monotonic() - started
    if as_json:
        json.dump(report_json(report, dry_run=dry_run, seconds=seconds), sys.stdout, indent=1)
        sys.stdout.write("\n")
    if not quiet:
        _print_summary(report, dry_run=dry_run, seconds=seconds)
    raise typer.Exit(EXIT_OK if report.complete else EXIT_SKIPPED)


def _run_json(r: RunSummary) -> dict[str, Any]:
    return {
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


@app.command()
def status(
    root: Annotated[
        str | None,
        typer.Option(
            "--root",
            help="The legacy Docker root [default: /var/lib/docker]; with --all-hosts, only "
            "the runs on this path.",
        ),
    ] = None,
    driver: DriverOption = "auto",
    all_hosts: Annotated[
        bool,
        typer.Option("--all-hosts", help="Summarise every host in the ledger: its last run."),
    ] = False,
    ledger: LedgerOption = None,
    host_id: HostOption = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show the last runs on a root and what remains to migrate (or, fleet-wide, every host)."""
    if all_hosts:
        _fleet_status(root, ledger, host_id, as_json=as_json, debug=debug)
        return
    try:
        legacy = open_root(root or "/var/lib/docker", driver)
        book = _open_ledger(ledger, host_id)
        try:
            state = api_status(legacy, book)
        finally:
            book.close()
    except (MigrateError, OSError) as exc:
        _fail(exc, debug)
    runs = [_run_json(r) for r in state.runs[-10:]]
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


def _fleet_status(
    root: str | None, ledger: str | None, host_id: str | None, *, as_json: bool, debug: bool
) -> None:
    """``status --all-hosts``: one line (or JSON object) per host and root, from its last run."""
    try:
        book = _open_ledger(ledger, host_id)
        try:
            last_runs = fleet_status(book, os.path.abspath(root) if root else None)
        finally:
            book.close()
    except MigrateError as exc:
        _fail(exc, debug)
    counts: dict[str, int] = {}
    for r in last_runs:
        counts[r.state] = counts.get(r.state, 0) + 1
    if as_json:
        hosts = [
            {**_run_json(r), "state": r.state, "seconds": _seconds(r.seconds)} for r in last_runs
        ]
        json.dump({"hosts": hosts, "states": counts}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    _print_fleet(last_runs, counts)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _print_fleet(last_runs: list[RunSummary], counts: dict[str, int]) -> None:
    header = ("HOST", "ROOT", "DRIVER", "LAST RUN", "MODE", "OUTCOME", "STATE", "MIGRATED",
              "SKIPPED", "HASHED", "DURATION")  # fmt: skip
    rows = [header]
    for r in last_runs:
        duration = "-" if r.seconds is None else f"{r.seconds:.1f} s"
        rows.append((
            r.host, r.root, r.driver, r.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"), r.mode,
            r.outcome, r.state, str(r.images_migrated), str(r.images_skipped),
            f"{r.bytes_hashed / 1e6:.1f} MB", duration,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    for r in last_runs:
        if r.message and r.state not in ("migrated", "audited"):
            print(f"{r.host} {r.root}: {r.message}")
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    hosts = len({r.host for r in last_runs})
    print(f"{hosts} hosts, {len(last_runs)} roots: {summary or 'no runs recorded'}")


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
    except (MigrateError, OSError) as exc:
        _fail(exc, debug)
    for problem in result.problems:
        print(problem)
    verdict = "ok" if result.ok else f"{len(result.problems)} problem(s)"
    print(f"verified {result.images} images and {result.layers} layers: {verdict}", file=sys.stderr)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_SKIPPED)


@app.command()
def export(
    images: Annotated[
        list[str], typer.Argument(help="Tags, v1 IDs or image IDs (unambiguous prefixes).")
    ],
    root: RootOption = "/var/lib/docker",
    driver: DriverOption = "auto",
    oci: Annotated[
        str | None, typer.Option("--oci", help="Write (or add to) an OCI image layout here.")
    ] = None,
    docker_archive: Annotated[
        str | None,
        typer.Option("--docker-archive", help="Write a tarball `docker load` reads here."),
    ] = None,
    compress: Annotated[
        str | None,
        typer.Option(
            "--compress", help="gzip or none [default: gzip for --oci, none for --docker-archive]."
        ),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Layers hashed and gzip threads (0: one per core).")
    ] = 0,
    verbose: VerboseOption = 0,
    quiet: QuietOption = 0,
    debug: DebugOption = False,
) -> None:
    """Export legacy images as an OCI image layout or a docker-archive tarball."""
    _setup_logging(verbose, quiet)
    if not verbose:
        # The plan covers the whole root: its notes on images not exported are noise here.
        logging.getLogger("migrate.engine").setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        legacy = open_root(root, driver)
        result = api_export(
            legacy,
            images,
            oci=oci,
            docker_archive=docker_archive,
            compress=compress,
            jobs=jobs or os.cpu_count() or 1,
        )
    except MigrateError as exc:
        _fail(exc, debug)
    seconds = time.monotonic() - started
    if not quiet:
        for image in result.images:
            names = f" ({', '.join(image.tags)})" if image.tags else ""
            print(f"exported {image.v1_ids[-1][:12]} -> {image.image_id}{names}", file=sys.stderr)
        for name, why in result.skipped:
            print(f"skipped {name}: {why}", file=sys.stderr)
        print(
            f"exported {len(result.images)} images, {result.layers_written} layers, "
            f"{result.bytes_written / 1e6:.1f} MB of layer data in {seconds:.2f} s "
            f"to {oci or docker_archive}",
            file=sys.stderr,
        )
    raise typer.Exit(EXIT_SKIPPED if result.skipped else EXIT_OK)


def main() -> None:
    """Console-script entry point."""
    app()
