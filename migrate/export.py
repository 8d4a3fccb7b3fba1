"""Exporting legacy images as an OCI image layout or a docker-archive tarball.

The images are planned by the migration engine itself, run against a dry-run sink that ignores
anything an earlier migration in place wrote: the configs, diff IDs and tar-split streams are
exactly those a migration produces, and only legacy data is read. Each layer is then replayed
from its tar-split stream straight into the output, optionally through a multi-threaded gzip
writer, with every digest computed as the bytes pass; no layer is ever held in memory.

Output files appear atomically: blobs of an OCI layout are renamed into ``blobs/sha256/`` when
complete and ``index.json`` is replaced last, so an interrupted export leaves the layout as it
was (plus unreferenced blobs); a docker archive is written under a temporary name beside its
destination and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from migrate import oci
from migrate.digest import BlobDigest, DiffID, ImageID
from migrate.engine import MIGRATED, ImageReport, Migration, Report
from migrate.errors import LegacyDataError, MigrateError, UsageError
from migrate.faults import checkpoint
from migrate.gzipstream import GzipWriter
from migrate.imageconfig import parse_config, parse_legacy_image
from migrate.layers import LayerResult, stream_layer
from migrate.legacy import LegacyRoot, read_small
from migrate.references import legacy_tags, normalize_name
from migrate.store import DryRunTarget, RealTarget, fsync_dir

log = logging.getLogger(__name__)

GZIP = "gzip"
NONE = "none"

_ID_RE = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")
_BLOCK = 512


@dataclass(frozen=True, slots=True)
class PlannedImage:
    """One image to export: its config, its layers base first, and the tags to record."""

    image_id: ImageID
    v1_ids: tuple[str, ...]
    """The legacy image of each layer, base first; the last one is the image itself."""
    raw_config: bytes
    layers: tuple[LayerResult, ...]
    tags: tuple[str, ...]


@dataclass(slots=True)
class ExportReport:
    """What an export wrote, and which requested images it had to leave out."""

    images: list[PlannedImage] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(the name as requested, why it cannot be exported)."""
    layers_written: int = 0
    bytes_written: int = 0
    bytes_hashed: int = 0
    """Layer bytes the plan hashed: the layers of the requested images, or of the whole root
    when a name could only be resolved by planning everything."""


# --- planning -----------------------------------------------------------------------------------


class _Collect:
    """Progress receiver that keeps every hashed layer's result."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerResult] = {}

    def layer_hashed(self, result: LayerResult) -> None:
        self.layers[result.v1_id] = result

    layer_cached = layer_hashed

    def image_done(self, report: ImageReport) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Plan:
    legacy: LegacyRoot
    report: Report
    layers: dict[str, LayerResult]
    target: DryRunTarget


@contextmanager
def _planned(legacy: LegacyRoot, jobs: int, names: Sequence[str]) -> Iterator[_Plan]:
    """The dry-run migration of what ``names`` need from ``legacy`` (all of it when they cannot
    be told apart from legacy data alone); its scratch files live until the block ends."""
    target = DryRunTarget(legacy.root, see_root=False)
    collect = _Collect()
    scope = _scope(legacy, names)
    try:
        migration = Migration(legacy, target, jobs=jobs, progress=collect, scope=scope)
        report = migration.run()
        yield _Plan(legacy, report, collect.layers, target)
    finally:
        target.close()


# --- naming the images --------------------------------------------------------------------------


def _scope(legacy: LegacyRoot, names: Sequence[str]) -> set[str] | None:
    """The v1 IDs ``names`` may designate, as far as legacy data alone tells; None when it
    cannot (a name that may be a new image ID or an ID prefix), and all must be planned.

    A reference takes every legacy entry that normalises to it, so that a collision between
    legacy names is settled in the plan exactly as a whole migration settles it.
    """
    ids, _ = legacy.image_ids()
    known = set(ids)
    try:
        raw = read_small(legacy.repositories(), os.path.basename(legacy.repositories()))
        tags = legacy_tags(raw)
    except (LegacyDataError, ValueError):
        tags = {}
    entries = [
        (_reference(f"{name}{'@' if ':' in tag else ':'}{tag}"), v1_id)
        for name, by_tag in tags.items()
        for tag, v1_id in by_tag.items()
    ]
    scope: set[str] = set()
    for name in names:
        if name.removeprefix("sha256:") in known:
            scope.add(name.removeprefix("sha256:"))
            continue
        reference = _reference(name)
        candidates = {v1_id for ref, v1_id in entries if ref is not None and ref == reference}
        if not candidates:
            return None
        scope |= candidates
    return scope


@dataclass(frozen=True, slots=True)
class _Request:
    name: str
    v1_id: str
    tag: str | None  # the reference to record; None when the image was named by ID


def _reference(text: str) -> str | None:
    """``text`` as the normalised reference the migration stores, or None when it is none."""
    name, separator, digest = text.partition("@")
    tag = ""
    if not separator:
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
    try:
        normalised = normalize_name(name)
    except ValueError:
        return None
    if separator:
        return f"{normalised}@{digest}"
    return f"{normalised}:{tag or 'latest'}"


def _resolve(plan: _Plan, name: str) -> _Request | tuple[str, str]:
    """What ``name`` designates: a request, or (name, reason) for an image that cannot export.

    Raises:
        UsageError: ``name`` designates no image, or several.
    """
    images = plan.report.images
    reference = _reference(name)
    if reference is not None:
        for image in images.values():
            if reference in image.tags:
                tag = reference if "@" not in reference else None
                return _Request(name, image.v1_id, tag)
        for legacy_name, tag, why in plan.report.dropped_tags:
            separator = "@" if ":" in tag else ":"
            if _reference(f"{legacy_name}{separator}{tag}") == reference:
                return name, _skip_reason(why, images)
    match = _ID_RE.fullmatch(name)
    if match is None:
        raise UsageError(f"image {name!r}: no such tag in the legacy root")
    return _by_id(name, match.group(1), images)


def _skip_reason(why: str, images: dict[str, ImageReport]) -> str:
    """Why a dropped tag's image was not migrated, when that is the reason it was dropped."""
    for image in images.values():
        if image.status != MIGRATED and why == f"image {image.v1_id} was not migrated":
            return f"image {image.v1_id}: {image.reason}"
    return why


def _by_id(name: str, prefix: str, images: dict[str, ImageReport]) -> _Request | tuple[str, str]:
    found: dict[str, ImageReport] = {}
    for image in images.values():
        by_v1 = image.v1_id.startswith(prefix)
        by_new = image.image_id is not None and image.image_id.hex.startswith(prefix)
        if by_v1 or by_new:
            key = str(image.image_id) if image.status == MIGRATED else image.v1_id
            found.setdefault(key, image)
    if not found:
        raise UsageError(f"image {name!r}: no such image ID or v1 ID in the legacy root")
    if len(found) > 1:
        raise UsageError(f"image {name!r}: ambiguous, it starts {len(found)} different image IDs")
    image = next(iter(found.values()))
    if image.status != MIGRATED:
        return name, f"image {image.v1_id}: {image.reason}"
    return _Request(name, image.v1_id, None)


def _ancestry(legacy: LegacyRoot, v1_id: str, depth: int) -> tuple[str, ...]:
    """``v1_id`` and its ``depth - 1`` nearest ancestors, base first, as the engine chains them."""
    chain = [v1_id]
    while len(chain) < depth:
        current = chain[-1]
        parent = (
            legacy.parent_file(current) or parse_legacy_image(legacy.image_json(current)).parent
        )
        chain.append(parent)
    return tuple(reversed(chain))


def plan_images(
    plan: _Plan, names: Sequence[str]
) -> tuple[list[PlannedImage], list[tuple[str, str]]]:
    """The images ``names`` designate, each once with all its requested tags, in first-named order.

    Raises:
        UsageError: a name designates no image, or several.
    """
    wanted: dict[str, tuple[str, list[str]]] = {}
    skipped: list[tuple[str, str]] = []
    for name in names:
        request = _resolve(plan, name)
        if isinstance(request, tuple):
            skipped.append(request)
            continue
        image_id = str(plan.report.images[request.v1_id].image_id)
        _, tags = wanted.setdefault(image_id, (request.v1_id, []))
        if request.tag is not None and request.tag not in tags:
            tags.append(request.tag)
    planned = []
    for image_id, (v1_id, tags) in wanted.items():
        planned.append(_planned_image(plan, ImageID.parse(image_id), v1_id, tags))
    return planned, skipped


def _planned_image(plan: _Plan, image_id: ImageID, v1_id: str, tags: list[str]) -> PlannedImage:
    path = f"image/{plan.legacy.driver}/imagedb/content/sha256/{image_id.hex}"
    raw_config = plan.target.read(path)
    if raw_config is None:
        raise MigrateError(f"image {v1_id}: the plan holds no config {image_id}")
    diff_ids, _ = parse_config(raw_config)
    try:
        v1_ids = _ancestry(plan.legacy, v1_id, len(diff_ids))
    except LegacyDataError as exc:
        raise MigrateError(f"image {v1_id}: {exc}") from exc
    layers = tuple(plan.layers[v1] for v1 in v1_ids)
    if [layer.diff_id for layer in layers] != diff_ids:
        raise MigrateError(f"image {v1_id}: its layers do not match its config {image_id}")
    return PlannedImage(image_id, v1_ids, raw_config, layers, tuple(tags))


# --- writing ------------------------------------------------------------------------------------


class _Sink(Protocol):
    def write(self, data: bytes) -> object: ...


class _Measured:
    """Passes bytes on to ``sink`` while hashing and counting them."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.sink.write(data)
        self.digest.update(data)
        self.size += len(data)

    def blob_digest(self) -> BlobDigest:
        return BlobDigest("sha256", self.digest.hexdigest())


def _write_layer(
    legacy: LegacyRoot, layer: LayerResult, out: _Measured, compress: str, jobs: int
) -> None:
    """Replay ``layer`` into ``out``, gzip'd on ``jobs`` threads when ``compress`` says so."""
    if compress == NONE:
        stream_layer(legacy, layer, out.write)
        return
    gzip = GzipWriter(out.write, threads=jobs)
    try:
        stream_layer(legacy, layer, gzip.write)
    except BaseException:
        gzip.abort()
        raise
    gzip.close()


class _Exporter(Protocol):
    def add(self, image: PlannedImage) -> None: ...
    def commit(self) -> None: ...


class OciLayoutWriter:
    """Adds images to the OCI image layout in ``path``, creating it when absent.

    Blobs already present with the right size are kept; ``index.json`` keeps the entries of
    images not exported now and is replaced atomically by :meth:`commit`.
    """

    def __init__(self, path: str, legacy: LegacyRoot, *, compress: str, jobs: int) -> None:
        self.path = path
        self.legacy = legacy
        self.compress = compress
        self.jobs = jobs
        self.files = RealTarget(path)
        self.blobs = os.path.join(path, "blobs", "sha256")
        self.entries = _existing_index(path)
        self.new_entries: list[dict[str, Any]] = []
        self.layers: dict[DiffID, oci.Descriptor] = {}
        self.bytes_written = 0
        self.files.makedirs("blobs/sha256", 0o755)
        self.files.write("oci-layout", oci.layout_json(), 0o644)
        if not self.files.exists("index.json"):
            # A valid, empty layout from the start: an interrupted first export can be rerun.
            self.files.write("index.json", oci.index_json([]), 0o644)

    def add(self, image: PlannedImage) -> None:
        layers = [self._layer(layer) for layer in image.layers]
        raw_config = oci.oci_config(image.raw_config)
        config = self._small_blob(oci.CONFIG, raw_config)
        manifest = self._small_blob(oci.MANIFEST, oci.manifest_json(config, layers))
        platform = oci.platform(raw_config)
        if not image.tags:
            self.new_entries.append(oci.index_entry(manifest, platform, {}))
        for tag in image.tags:
            annotations = {oci.CONTAINERD_NAME: _qualified(tag), oci.REF_NAME: tag}
            self.new_entries.append(oci.index_entry(manifest, platform, annotations))
        log.info("exported image %s as manifest %s", image.image_id, manifest.digest)

    def commit(self) -> None:
        names = {e["annotations"][oci.REF_NAME] for e in self.new_entries if "annotations" in e}
        digests = {e["digest"] for e in self.new_entries}
        kept = [e for e in self.entries if not _replaced(e, names, digests)]
        self.files.write("index.json", oci.index_json([*kept, *self.new_entries]), 0o644)

    def _layer(self, layer: LayerResult) -> oci.Descriptor:
        if layer.diff_id in self.layers:
            return self.layers[layer.diff_id]
        if (
            self.compress == NONE
            and _blob_size(self.blobs, layer.diff_id.hex) == layer.bytes_hashed
        ):
            descriptor = oci.Descriptor(oci.LAYER, layer.diff_id, layer.bytes_hashed)
        else:
            descriptor = self._stream_layer(layer)
        self.layers[layer.diff_id] = descriptor
        return descriptor

    def _stream_layer(self, layer: LayerResult) -> oci.Descriptor:
        media_type = oci.LAYER if self.compress == NONE else oci.LAYER_GZIP
        with _blob_file(self.blobs) as (handle, commit):
            out = _Measured(handle)
            _write_layer(self.legacy, layer, out, self.compress, self.jobs)
            digest = out.blob_digest()
            commit(digest.hex)
        self.bytes_written += out.size
        log.debug("wrote layer %s as blob %s (%d bytes)", layer.v1_id, digest, out.size)
        return oci.Descriptor(media_type, digest, out.size)

    def _small_blob(self, media_type: str, data: bytes) -> oci.Descriptor:
        digest = BlobDigest.of(data)
        self.files.write(f"blobs/sha256/{digest.hex}", data, 0o644)
        return oci.Descriptor(media_type, digest, len(data))


def _qualified(reference: str) -> str:
    """``reference`` with the registry and ``library/`` Docker implies, as containerd names it."""
    first = reference.split("/", 1)[0]
    if "/" in reference and ("." in first or ":" in first or first == "localhost"):
        return reference
    if "/" not in reference.split("@", 1)[0].rsplit(":", 1)[0]:
        return f"docker.io/library/{reference}"
    return f"docker.io/{reference}"


def _replaced(entry: dict[str, Any], names: set[str], digests: set[str]) -> bool:
    name = entry.get("annotations", {}).get(oci.REF_NAME)
    return name in names if name is not None else entry.get("digest") in digests


def _existing_index(path: str) -> list[dict[str, Any]]:
    """The manifests listed by the layout at ``path``; [] for a new or empty directory."""
    if not os.path.exists(path):
        os.makedirs(path, 0o755)
        return []
    if not os.path.isdir(path):
        raise UsageError(f"{path}: exists and is not a directory")
    if not os.path.exists(os.path.join(path, "oci-layout")):
        if os.listdir(path):
            raise UsageError(f"{path}: not empty and not an OCI image layout")
        return []
    try:
        with open(os.path.join(path, "index.json"), "rb") as fh:
            index = json.load(fh)
        return list(index["manifests"])
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}/index.json: unusable ({exc})") from exc


def _blob_size(blobs: str, hex_digest: str) -> int | None:
    try:
        return os.path.getsize(os.path.join(blobs, hex_digest))
    except FileNotFoundError:
        return None


@contextmanager
def _blob_file(blobs: str) -> Iterator[tuple[BinaryIO, Any]]:
    """A temporary file in ``blobs`` and a function that renames it to its digest when complete.

    A blob already present under that name with the same size is kept and the new copy
    dropped: blobs are named by their content, so it holds the same bytes.
    """
    fd, tmp = tempfile.mkstemp(prefix=".blob.", suffix=".tmp", dir=blobs)
    committed = False

    def commit(hex_digest: str) -> None:
        nonlocal committed
        handle.flush()
        os.fsync(handle.fileno())
        final = os.path.join(blobs, hex_digest)
        checkpoint("before-rename")
        if _blob_size(blobs, hex_digest) == os.fstat(handle.fileno()).st_size:
            os.unlink(tmp)
        else:
            os.fchmod(handle.fileno(), 0o644)
            os.rename(tmp, final)
            fsync_dir(blobs)
        committed = True

    with os.fdopen(fd, "wb") as handle:
        try:
            yield handle, commit
        finally:
            if not committed:
                os.unlink(tmp)


class DockerArchiveWriter:
    """Writes images to a tarball in the layout ``docker save`` has written since Docker 1.10.

    ``manifest.json`` lists each image's config ``<id>.json``, its tags and its layers; each
    layer sits in a directory named by its legacy image ID with ``VERSION``, the legacy ``json``
    and ``layer.tar``, and ``repositories`` maps each tag to its top layer's directory. Docker
    1.10 and later load through ``manifest.json``; older Docker loads the rest.
    """

    def __init__(self, handle: BinaryIO, legacy: LegacyRoot, *, compress: str, jobs: int) -> None:
        self.handle = handle
        self.legacy = legacy
        self.compress = compress
        self.jobs = jobs
        self.manifest: list[dict[str, Any]] = []
        self.repositories: dict[str, dict[str, str]] = {}
        self.written: set[str] = set()
        self.bytes_written = 0

    def add(self, image: PlannedImage) -> None:
        for v1_id, layer in zip(image.v1_ids, image.layers, strict=True):
            self._layer(v1_id, layer)
        config_name = f"{image.image_id.hex}.json"
        if config_name not in self.written:
            self._file(config_name, image.raw_config)
            self.written.add(config_name)
        self.manifest.append(
            {
                "Config": config_name,
                "RepoTags": list(image.tags) or None,
                "Layers": [f"{v1_id}/layer.tar" for v1_id in image.v1_ids],
            }
        )
        for tag in image.tags:
            name, _, version = tag.rpartition(":")
            self.repositories.setdefault(name, {})[version] = image.v1_ids[-1]
        log.info("exported image %s", image.image_id)

    def commit(self) -> None:
        self._file("manifest.json", json.dumps(self.manifest, separators=(",", ":")).encode())
        if self.repositories:
            self._file(
                "repositories", json.dumps(self.repositories, separators=(",", ":")).encode()
            )
        self.handle.write(b"\0" * (2 * _BLOCK))

    def _layer(self, v1_id: str, layer: LayerResult) -> None:
        if v1_id in self.written:
            return
        self.written.add(v1_id)
        self.handle.write(_header(f"{v1_id}/", 0, tarfile.DIRTYPE))
        self._file(f"{v1_id}/VERSION", b"1.0")
        self._file(f"{v1_id}/json", self.legacy.image_json(v1_id))
        start = self.handle.tell()
        self.handle.write(_header(f"{v1_id}/layer.tar", 0))
        out = _Measured(self.handle)
        _write_layer(self.legacy, layer, out, self.compress, self.jobs)
        self._pad(out.size)
        end = self.handle.tell()
        self.handle.seek(start)
        self.handle.write(_header(f"{v1_id}/layer.tar", out.size))
        self.handle.seek(end)
        self.bytes_written += out.size

    def _file(self, name: str, data: bytes) -> None:
        self.handle.write(_header(name, len(data)))
        self.handle.write(data)
        self._pad(len(data))

    def _pad(self, size: int) -> None:
        self.handle.write(b"\0" * (-size % _BLOCK))


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """One tar header block, the same for every export: owner root, time 0.

    GNU format keeps it one block whatever the size (base-256 above 8 GiB), which lets a layer
    whose size is known only once written be written first and its header patched afterwards.
    """
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    block = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    if len(block) != _BLOCK:
        raise MigrateError(f"tar entry {name}: header is not a single block")
    return block


# --- the export ---------------------------------------------------------------------------------


def export_images(
    legacy: LegacyRoot,
    names: Sequence[str],
    *,
    oci_layout: str | None = None,
    docker_archive: str | None = None,
    compress: str | None = None,
    jobs: int = 1,
) -> ExportReport:
    """Export the images ``names`` designate from ``legacy`` to one output.

    Exactly one of ``oci_layout`` (a directory) and ``docker_archive`` (a file) is given.
    ``compress`` is ``gzip`` or ``none``; by default gzip for an OCI layout and none for a docker
    archive, as ``docker save`` writes it. Requested images that cannot be exported (their
    legacy data is damaged) are listed in the report's ``skipped``; the others are written.

    Raises:
        UsageError: the outputs or the compression are not given right, a name designates no
            image or several, or no requested image can be exported.
        MigrateError: the legacy root cannot be planned, or a layer fails while written; the
            output is then left as it was.
    """
    if (oci_layout is None) == (docker_archive is None):
        raise UsageError("give exactly one of --oci DIR and --docker-archive FILE")
    compress = compress or (GZIP if oci_layout is not None else NONE)
    if compress not in (GZIP, NONE):
        raise UsageError(f"unknown compression {compress!r}: use gzip or none")
    if not names:
        raise UsageError("name at least one image to export")
    report = ExportReport()
    # TODO(#8): every exported layer is read twice, once by the plan for its diff ID and once
    # to write it; the ledger of an earlier run, or the writing pass itself for an OCI layout,
    # could supply the diff ID and halve the reads.
    with _planned(legacy, jobs, names) as plan:
        images, report.skipped = plan_images(plan, names)
        report.bytes_hashed = plan.report.bytes_hashed
        for name, why in report.skipped:
            log.warning("cannot export %s: %s", name, why)
        if not images:
            raise UsageError("none of the requested images can be exported")
        if oci_layout is not None:
            layout = OciLayoutWriter(oci_layout, legacy, compress=compress, jobs=jobs)
            _add_all(layout, images)
            report.bytes_written = layout.bytes_written
            report.layers_written = len(layout.layers)
        else:
            assert docker_archive is not None
            report.bytes_written = _write_archive(docker_archive, legacy, images, compress, jobs)
            report.layers_written = len({v1 for image in images for v1 in image.v1_ids})
    report.images = images
    return report


def _add_all(exporter: _Exporter, images: list[PlannedImage]) -> None:
    for image in images:
        exporter.add(image)
    exporter.commit()


def _write_archive(
    path: str, legacy: LegacyRoot, images: list[PlannedImage], compress: str, jobs: int
) -> int:
    path = os.path.abspath(path)
    directory, base = os.path.split(path)
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory")
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: no such directory")
    with RealTarget(directory).stream(base, 0o644) as handle:
        archive = DockerArchiveWriter(handle, legacy, compress=compress, jobs=jobs)
        _add_all(archive, images)
    return archive.bytes_written
