"""The migration: legacy root in, Docker 1.10 content-addressable store out.

The phases follow Docker 1.10's own migration (see the migration spec, section 3): hash every
layer (in parallel), create every image in name order with its parent first, write the v1 → new
ID map, migrate containers, then tags. All output goes through a :class:`~migrate.store.Target`,
so a dry run executes exactly the same code against a recorder.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections.abc import Collection, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from migrate import containers, distribution, references
from migrate.digest import ChainID, DiffID, ImageID, chain_id
from migrate.errors import LegacyDataError, MigrateError, TargetError
from migrate.faults import checkpoint
from migrate.imageconfig import HistoryItem, LegacyImage, make_config, parse_legacy_image
from migrate.layers import LayerJob, LayerResult, hash_layer
from migrate.legacy import LegacyRoot, read_small
from migrate.store import DIR_MODE, RealTarget, Target

if TYPE_CHECKING:
    from concurrent.futures import Future

log = logging.getLogger(__name__)

MIGRATED = "migrated"
SKIPPED = "skipped"


class LayerCache(Protocol):
    """Remembers finished units: layers already hashed, so a resumed run does not hash them
    again, and the layers and images already in place, for ``status``.

    The engine calls each ``*_done`` method only once the unit's files are durably in place.
    """

    def cached_layer(self, job: LayerJob) -> LayerResult | None:
        """A result recorded earlier for this exact legacy layer, or None."""

    def layer_done(self, job: LayerJob, result: LayerResult) -> None:
        """Record a hashing result whose files (a regenerated tar-split) are durably in place."""

    def layer_registered(self, v1_id: str, chain: ChainID, tar_split_path: str) -> None:
        """Record that the layer's layerdb entry is in place, with its tar-split at that path."""

    def image_done(self, report: ImageReport) -> None:
        """Record an image that is migrated (its config is in place) or skipped."""


class NoCache:
    """A layer cache that remembers nothing."""

    def cached_layer(self, job: LayerJob) -> LayerResult | None:
        return None

    def layer_done(self, job: LayerJob, result: LayerResult) -> None:
        pass

    def layer_registered(self, v1_id: str, chain: ChainID, tar_split_path: str) -> None:
        pass

    def image_done(self, report: ImageReport) -> None:
        pass


@dataclass(slots=True)
class ImageReport:
    v1_id: str
    image_id: ImageID | None = None
    status: str = SKIPPED
    reason: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LayerReport:
    v1_id: str
    diff_id: DiffID
    chain_id: ChainID
    size: int
    source: str
    note: str
    integrity_failed: bool = False


@dataclass(frozen=True, slots=True)
class ContainerReport:
    container_id: str
    status: str
    reason: str = ""


@dataclass(slots=True)
class Report:
    """Everything a run did, for the CLI's summary and ``--json``."""

    images: dict[str, ImageReport] = field(default_factory=dict)
    layers: list[LayerReport] = field(default_factory=list)
    containers: list[ContainerReport] = field(default_factory=list)
    dropped_tags: list[tuple[str, str, str]] = field(default_factory=list)
    ignored_entries: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bytes_hashed: int = 0
    hash_seconds: float = 0.0
    dry_run: bool = False

    @property
    def skipped(self) -> list[ImageReport]:
        return [image for image in self.images.values() if image.status != MIGRATED]

    @property
    def complete(self) -> bool:
        """Whether nothing was left behind: no image, container or tag file skipped."""
        containers_left = any(c.status != MIGRATED for c in self.containers)
        return not (self.skipped or containers_left or self.problems)


@dataclass(frozen=True, slots=True)
class _Migrated:
    """A created image, as its children need it."""

    image_id: ImageID
    diff_ids: tuple[DiffID, ...]
    history: tuple[HistoryItem, ...]
    chain_id: ChainID


class Progress(Protocol):
    def layer_hashed(self, result: LayerResult) -> None: ...
    def layer_cached(self, result: LayerResult) -> None: ...  # known already: not hashed again
    def image_done(self, report: ImageReport) -> None: ...


class NoProgress:
    def layer_hashed(self, result: LayerResult) -> None:
        pass

    def layer_cached(self, result: LayerResult) -> None:
        pass

    def image_done(self, report: ImageReport) -> None:
        pass


class Migration:
    """One migration of a legacy root into ``target``.

    Skips, regenerations and problems are logged at INFO as they happen (``-v``); the report,
    which the CLI prints as its summary, is where users read them.
    """

    def __init__(
        self,
        legacy: LegacyRoot,
        target: Target,
        *,
        jobs: int = 1,
        cache: LayerCache | None = None,
        progress: Progress | None = None,
        scope: Collection[str] | None = None,
    ) -> None:
        """``scope``, when given, limits the run to those v1 IDs and their ancestors."""
        self.legacy = legacy
        self.scope = scope
        self.target = target
        self.jobs = max(1, jobs)
        self.cache = cache or NoCache()
        self.progress = progress or NoProgress()
        self.report = Report(dry_run=not isinstance(target, RealTarget))
        self.image_root = f"image/{legacy.driver}"
        self._images: dict[str, LegacyImage] = {}
        self._parents: dict[str, str] = {}
        self._layers: dict[str, LayerResult] = {}
        self._migrated: dict[str, _Migrated] = {}

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> Report:
        """Migrate everything that is sound; report what was skipped and why."""
        if not self.legacy.has_graph():
            raise MigrateError(f"{self.legacy.root}: no graph directory, nothing to migrate")
        self._discard_leftovers()
        self._create_dirs()
        ids = self._scan()
        if self.scope is not None:
            ids = self._within_scope(ids)
        self._hash_layers(self._layers_needed(ids))
        for v1_id in ids:
            self._migrate_image(v1_id, [])
        self._write_map()
        self._migrate_containers()
        self._migrate_tags()
        return self.report

    def _discard_leftovers(self) -> None:
        """Remove the temporaries and staged layers an interrupted run left behind."""
        removed = self.target.discard_leftovers(self.image_root)
        removed += self.target.discard_leftovers("", bases=_MARKERS)
        for container_id in self.legacy.container_ids():
            removed += self.target.discard_leftovers(
                f"containers/{container_id}", bases=("config.v2.json",)
            )
        for path in removed:
            log.info("removed the leftover of an interrupted run %s", path)

    def _create_dirs(self) -> None:
        for path in ("image", self.image_root):
            self.target.makedirs(path, DIR_MODE)
        for path in ("layerdb", "imagedb", "imagedb/content/sha256", "imagedb/metadata/sha256"):
            self.target.makedirs(f"{self.image_root}/{path}", DIR_MODE)
        for path in ("layerdb/sha256", "layerdb/tmp"):
            self.target.makedirs(f"{self.image_root}/{path}", 0o755)

    # -- scanning ---------------------------------------------------------------------------

    def _scan(self) -> list[str]:
        """Read every legacy image's metadata; record the unreadable ones as skipped."""
        ids, ignored = self.legacy.image_ids()
        self.report.ignored_entries = ignored
        for name in ignored:
            log.debug("ignored graph/%s: not an image ID", name)
        for v1_id in ids:
            self.report.images[v1_id] = ImageReport(v1_id)
            try:
                image = self._read_image(v1_id)
            except LegacyDataError as exc:
                self._skip(v1_id, exc.cause)
                continue
            self._images[v1_id] = image
            self._parents[v1_id] = self.legacy.parent_file(v1_id) or image.parent
        return ids

    def _within_scope(self, ids: list[str]) -> list[str]:
        """The images of ``ids`` in the scope or below it; the others leave the report."""
        scope = self.scope or ()
        kept = {ancestor for v1_id in scope if v1_id in ids for ancestor in self._chain(v1_id)}
        for v1_id in ids:
            if v1_id not in kept:
                del self.report.images[v1_id]
        return [v1_id for v1_id in ids if v1_id in kept]

    def _read_image(self, v1_id: str) -> LegacyImage:
        raw = self.legacy.image_json(v1_id)
        try:
            return parse_legacy_image(raw)
        except ValueError as exc:
            raise LegacyDataError(f"image {v1_id}", f"json: {exc}") from exc

    def _chain(self, v1_id: str) -> Iterator[str]:
        """``v1_id`` and its ancestors, nearest first, stopping at a cycle."""
        seen: set[str] = set()
        while v1_id and v1_id not in seen:
            seen.add(v1_id)
            yield v1_id
            v1_id = self._parents.get(v1_id, "")

    def _layers_needed(self, ids: list[str]) -> list[str]:
        """Layers of images that can still migrate (sound metadata all the way down)."""
        return [v1_id for v1_id in ids if v1_id in self._images]

    # -- layers -----------------------------------------------------------------------------

    def _job(self, v1_id: str) -> LayerJob:
        regenerated = f"{self.image_root}/layerdb/tmp/regenerated-{v1_id}.json.gz"
        return LayerJob(
            self.legacy.root,
            self.legacy.driver,
            v1_id,
            self._parents.get(v1_id, ""),
            self.target.local_path(regenerated),
        )

    def _hash_layers(self, v1_ids: list[str]) -> None:
        """Hash every layer not known already; largest first so no big layer runs last alone."""
        pending: list[LayerJob] = []
        for v1_id in v1_ids:
            job = self._job(v1_id)
            cached = self.cache.cached_layer(job)
            if cached is not None:
                self._layer_hashed(job, cached, fresh=False)
                self.progress.layer_cached(cached)
            else:
                pending.append(job)
        pending.sort(key=lambda job: self.legacy.layer_size_hint(job.v1_id), reverse=True)
        started = time.monotonic()
        # Closed explicitly: when recording a result fails (the ledger went away), the layers
        # not started yet are cancelled now rather than hashed for nothing.
        with closing(self._execute(pending)) as outcomes:
            for job, outcome in outcomes:
                if isinstance(outcome, LayerResult):
                    self._layer_hashed(job, outcome, fresh=True)
                elif isinstance(outcome, TargetError):
                    raise outcome  # a full disk fails every later layer too: stop cleanly
                else:
                    self._layer_errors[job.v1_id] = str(outcome)  # the image's skip reason
        self.report.hash_seconds = time.monotonic() - started

    _layer_errors: dict[str, str]

    def _execute(
        self, jobs: list[LayerJob]
    ) -> Generator[tuple[LayerJob, LayerResult | MigrateError]]:
        self._layer_errors = {}
        if self.jobs == 1 or len(jobs) <= 1:
            for job in jobs:
                yield job, _hash_or_error(job)
            return
        # Imported here: a run hashing in one process need not pay for process pools (issue 7).
        from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: PLC0415
        from multiprocessing import get_context  # noqa: PLC0415

        with ProcessPoolExecutor(
            self.jobs,
            mp_context=get_context("fork"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            futures: dict[Future[LayerResult | MigrateError], LayerJob] = {
                pool.submit(_hash_or_error, job): job for job in jobs
            }
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _layer_hashed(self, job: LayerJob, result: LayerResult, *, fresh: bool) -> None:
        self._layers[job.v1_id] = result
        if fresh:
            checkpoint("layer-hashed")
            self.cache.layer_done(job, result)
            checkpoint("layer-recorded")
            self.report.bytes_hashed += result.bytes_hashed
            self.progress.layer_hashed(result)
        if result.note:
            log.info("regenerated layer %s: %s", job.v1_id, result.note)

    # -- images -----------------------------------------------------------------------------

    def _skip(self, v1_id: str, reason: str) -> None:
        report = self.report.images.setdefault(v1_id, ImageReport(v1_id))
        report.status, report.reason = SKIPPED, reason
        log.info("skipped image %s: %s", v1_id, reason)
        self.cache.image_done(report)
        self.progress.image_done(report)

    def _migrate_image(self, v1_id: str, path: list[str]) -> _Migrated | None:
        """Create ``v1_id``'s image after its parent's; None when it cannot migrate."""
        if v1_id in self._migrated:
            return self._migrated[v1_id]
        report = self.report.images.get(v1_id)
        if report is not None and report.reason:
            return None
        if v1_id in path:
            for member in path[path.index(v1_id) :]:
                self._skip(member, f"parent chain loops back to {v1_id}")
            return None
        usable, parent = self._parent_of(v1_id, path)
        if not usable:
            return None
        try:
            migrated = self._create_image(v1_id, parent)
        except TargetError:
            raise  # the store cannot be written: nothing later can be either
        except MigrateError as exc:
            self._skip(v1_id, str(exc))
            return None
        self._migrated[v1_id] = migrated
        checkpoint("image-created")
        self.report.images[v1_id].image_id = migrated.image_id
        self.report.images[v1_id].status = MIGRATED
        log.info("migrated image %s to %s", v1_id, migrated.image_id)
        self.cache.image_done(self.report.images[v1_id])
        self.progress.image_done(self.report.images[v1_id])
        return migrated

    def _parent_of(self, v1_id: str, path: list[str]) -> tuple[bool, _Migrated | None]:
        """Whether ``v1_id`` can migrate as far as its parent goes, and that migrated parent."""
        parent_id = self._parents.get(v1_id, "")
        if not parent_id:
            return True, None
        if parent_id not in self.report.images:
            self._skip(v1_id, f"parent image {parent_id} does not exist")
            return False, None
        parent = self._migrate_image(parent_id, [*path, v1_id])
        if parent is None:
            if not self.report.images[v1_id].reason:
                self._skip(v1_id, f"parent image {parent_id} was not migrated")
            return False, None
        return True, parent

    def _create_image(self, v1_id: str, parent: _Migrated | None) -> _Migrated:
        layer = self._layers.get(v1_id)
        if layer is None:
            raise MigrateError(self._layer_errors.get(v1_id, f"layer {v1_id} was not hashed"))
        image = self._images[v1_id]
        diff_ids = (*parent.diff_ids, layer.diff_id) if parent else (layer.diff_id,)
        history = (*parent.history, image.history) if parent else (image.history,)
        chain = chain_id(parent.chain_id if parent else None, layer.diff_id)

        self._register_layer(v1_id, layer, chain, parent.chain_id if parent else None)
        raw_config = make_config(image, diff_ids, history)
        image_id = ImageID.of(raw_config)
        self._store_image(image_id, raw_config, parent.image_id if parent else None)
        self._add_distribution(v1_id, layer.diff_id)
        return _Migrated(image_id, diff_ids, history, chain)

    def _register_layer(
        self, v1_id: str, layer: LayerResult, chain: ChainID, parent: ChainID | None
    ) -> None:
        """Write the layer's layerdb entry unless that chain ID is registered already."""
        final = f"{self.image_root}/layerdb/sha256/{chain.hex}"
        self.report.layers.append(
            LayerReport(
                v1_id,
                layer.diff_id,
                chain,
                layer.size,
                layer.source,
                layer.note,
                layer.integrity_failed,
            )
        )
        existing = self.target.read(f"{final}/diff")
        if existing is not None:
            if existing.strip() != str(layer.diff_id).encode():
                raise MigrateError(f"layer {chain} exists with a different diff ID")
            # The first graph ID registered for a chain stays its cache-id (spec 3.4).
            self._layer_registered(v1_id, chain, final)
            return
        staging = f"{self.image_root}/layerdb/tmp/layer-{v1_id}"
        self.target.remove_tree(staging)
        self.target.makedirs(staging, 0o700)
        self.target.write(f"{staging}/diff", str(layer.diff_id).encode(), 0o644)
        self.target.write(f"{staging}/size", str(layer.size).encode(), 0o644)
        self.target.write(f"{staging}/cache-id", v1_id.encode(), 0o644)
        if parent is not None:
            self.target.write(f"{staging}/parent", str(parent).encode(), 0o644)
        self.target.copy(f"{staging}/tar-split.json.gz", layer.tar_split_path, 0o644)
        if self.target.exists(final):
            # An entry without its diff is broken (a file of it was deleted) and Docker would not
            # load it; the complete one staged here takes its place.
            log.warning("replaced incomplete layer entry %s", chain)
            self.target.remove_tree(final)
        self.target.rename_dir(staging, final)
        checkpoint("layer-registered")
        self._layer_registered(v1_id, chain, final)

    def _layer_registered(self, v1_id: str, chain: ChainID, final: str) -> None:
        tar_split = self.target.local_path(f"{final}/tar-split.json.gz")
        self.cache.layer_registered(v1_id, chain, tar_split)

    def _store_image(self, image_id: ImageID, raw_config: bytes, parent: ImageID | None) -> None:
        self.target.write(
            f"{self.image_root}/imagedb/content/sha256/{image_id.hex}", raw_config, 0o600
        )
        if parent is not None:
            metadata = f"{self.image_root}/imagedb/metadata/sha256/{image_id.hex}"
            self.target.makedirs(metadata, DIR_MODE)
            self.target.write(f"{metadata}/parent", str(parent).encode(), 0o600)

    def _add_distribution(self, v1_id: str, diff_id: DiffID) -> None:
        """Record the pulled blob digest for the layer, when the legacy checksum is valid."""
        raw = self.legacy.checksum(v1_id)
        digest = distribution.parse_checksum(raw) if raw is not None else None
        if digest is None:
            return
        base = f"{self.image_root}/distribution"
        self.target.makedirs(base, DIR_MODE)
        for sub in ("v2metadata-by-diffid/sha256", "diffid-by-digest/sha256"):
            self.target.makedirs(f"{base}/{sub}", 0o755)
        path = f"{base}/v2metadata-by-diffid/sha256/{diff_id.hex}"
        existing = self.target.read(path)
        self.target.write(path, distribution.add_v2_metadata(existing, digest), 0o644)
        self.target.write(
            f"{base}/diffid-by-digest/sha256/{digest.hex}",
            distribution.diffid_by_digest(diff_id),
            0o644,
        )

    def _write_map(self) -> None:
        mapping = {v1_id: migrated.image_id for v1_id, migrated in self._migrated.items()}
        self.target.write(".migration-v1-images.json", distribution.images_map_json(mapping), 0o600)
        for v1_id, result in self._layers.items():
            if result.source != "tar-split":
                self.target.remove(f"{self.image_root}/layerdb/tmp/regenerated-{v1_id}.json.gz")

    # -- containers -------------------------------------------------------------------------

    def _migrate_containers(self) -> None:
        for container_id in self.legacy.container_ids():
            status, reason = self._migrate_container(container_id)
            self.report.containers.append(ContainerReport(container_id, status, reason))
            if status != MIGRATED:
                log.info("skipped container %s: %s", container_id, reason)

    def _migrate_container(self, container_id: str) -> tuple[str, str]:
        v2_path = f"containers/{container_id}/config.v2.json"
        if self.target.exists(v2_path):
            return MIGRATED, "already migrated"
        try:
            raw = self.legacy.container_config(container_id)
            v1_image = containers.container_image(raw)
        except LegacyDataError as exc:
            return SKIPPED, exc.cause
        except ValueError as exc:
            return SKIPPED, f"invalid config.json: {exc}"
        migrated = self._migrated.get(v1_image)
        if migrated is None:
            known = v1_image in self.report.images
            return SKIPPED, f"image {v1_image} {'was not migrated' if known else 'does not exist'}"
        if not self.legacy.has_layer(container_id):
            return (
                SKIPPED,
                f"its layer {container_id} is missing from the {self.legacy.driver} driver",
            )

        # The mount record first and config.v2.json last: its presence means "done".
        mount = f"{self.image_root}/layerdb/mounts/{container_id}"
        self.target.makedirs(mount, 0o755)
        self.target.write(f"{mount}/mount-id", container_id.encode(), 0o644)
        if self.legacy.has_layer(f"{container_id}-init"):
            self.target.write(f"{mount}/init-id", f"{container_id}-init".encode(), 0o644)
        self.target.write(f"{mount}/parent", str(migrated.chain_id).encode(), 0o644)
        rewritten = containers.rewrite_container_config(raw, migrated.image_id)
        self.target.write(v2_path, rewritten, 0o600)
        return MIGRATED, ""

    # -- tags -------------------------------------------------------------------------------

    def _migrate_tags(self) -> None:
        """Write repositories.json: tags already there are kept, tags of new images added.

        Docker 1.10 migrated tags once and then trusted its marker; merging instead lets a run
        pick up images added to the legacy root since the last run, without ever replacing a
        reference that exists.
        """
        path = self.legacy.repositories()
        if not os.path.exists(path):
            return
        try:
            raw = read_small(path, os.path.basename(path))
            mapping = {v1: m.image_id for v1, m in self._migrated.items()}
            outcome = references.migrate_tags(raw, mapping)
        except (LegacyDataError, ValueError) as exc:
            problem = f"{os.path.basename(path)}: {exc}; tags not migrated"
            if isinstance(exc, LegacyDataError):
                problem = f"{exc}; tags not migrated"
            self.report.problems.append(problem)
            log.info("%s", problem)
            return
        refs = self._existing_references()
        for name, tags in outcome.references.items():
            for ref, image_id in tags.items():
                refs.setdefault(name, {}).setdefault(ref, image_id)
        self._attach_tags(refs)
        self.report.dropped_tags = outcome.dropped
        self.target.write(
            f"{self.image_root}/repositories.json", references.repositories_json(refs), 0o600
        )
        self.target.write(".migration-v1-tags", b"", 0o644)

    def _existing_references(self) -> dict[str, dict[str, ImageID]]:
        raw = self.target.read(f"{self.image_root}/repositories.json")
        if not raw:
            return {}
        try:
            return references.parse_repositories_json(raw)
        except ValueError as exc:
            raise MigrateError(f"{self.image_root}/repositories.json is unusable: {exc}") from exc

    def _attach_tags(self, refs: dict[str, dict[str, ImageID]]) -> None:
        by_image: dict[ImageID, list[str]] = {}
        for tags in refs.values():
            for ref, image_id in tags.items():
                by_image.setdefault(image_id, []).append(ref)
        for image in self.report.images.values():
            if image.image_id is not None:
                image.tags = sorted(by_image.get(image.image_id, []))


_MARKERS = (".migration-v1-images.json", ".migration-v1-tags")
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Make a hashing worker die with the run that started it.

    A worker outlives a run killed with SIGKILL otherwise, blocked for ever on its queue and
    still holding the root's lock it inherited, so the resumed run would be refused.
    """
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None:
        return  # not Linux: Docker roots to migrate live on Linux hosts
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the run died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _hash_or_error(job: LayerJob) -> LayerResult | MigrateError:
    try:
        return hash_layer(job)
    except MigrateError as exc:
        return exc


def migrate(
    legacy: LegacyRoot,
    target: Target,
    *,
    jobs: int = 1,
    cache: LayerCache | None = None,
    progress: Progress | None = None,
) -> Report:
    """Run one migration; see :class:`Migration`."""
    return Migration(legacy, target, jobs=jobs, cache=cache, progress=progress).run()
