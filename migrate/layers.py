"""Computing a legacy layer's diff ID: tar-split replay first, regeneration when it fails.

Runs in worker processes, so everything here takes and returns plain picklable values.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import BinaryIO, cast

from migrate import tarsplit
from migrate.confine import ConfinedRoot
from migrate.digest import DiffID
from migrate.errors import (
    IntegrityCheckError,
    LayerContentError,
    MigrateError,
    TargetError,
    TarSplitError,
)
from migrate.faults import checkpoint
from migrate.legacy import LegacyRoot, NotRegularError, open_regular
from migrate.store import fsync_dir

TAR_SPLIT = "tar-split"
REGENERATED = "regenerated"


@dataclass(frozen=True, slots=True)
class LayerJob:
    """One layer to hash: where its legacy data is and where a regenerated tar-split goes."""

    root: str
    driver: str
    v1_id: str
    parent_v1_id: str
    regenerated_path: str


@dataclass(frozen=True, slots=True)
class LayerResult:
    """A layer's content identity and how it was obtained."""

    v1_id: str
    diff_id: DiffID
    size: int
    source: str  # TAR_SPLIT or REGENERATED
    tar_split_path: str  # the tar-split stream that reassembles to exactly the hashed bytes
    bytes_hashed: int
    seconds: float
    note: str = ""  # why the recorded tar-split could not be used, when regenerated
    integrity_failed: bool = False  # a layer file's CRC-64 no longer matched: changed on disk


class _MissingLayer:
    """Stands in for a layer directory that does not exist.

    Replay only opens files with content, so a layer made of directories and empty files
    still replays without its directory, as it did in Docker.
    """

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def open(self, name: bytes) -> BinaryIO:
        raise _NoLayerDirectory(self.fault)

    def close(self) -> None:
        pass


class _NoLayerDirectory(TarSplitError):
    """Replay needed a file of a layer whose directory is missing or refused."""


class _TargetFile:
    """The regenerated tar-split's temporary file; a failed write stops the whole run."""

    def __init__(self, raw: BinaryIO, shown: str) -> None:
        self._raw = raw
        self._shown = shown

    def write(self, data: bytes) -> int:
        try:
            return self._raw.write(data)
        except OSError as exc:
            raise TargetError(self._shown, exc.strerror or str(exc)) from exc


def _replay(
    legacy: LegacyRoot, v1_id: str, tar_split: str, write: tarsplit.Write | None = None
) -> tarsplit.Assembly:
    try:
        stream = open_regular(tar_split)
    except NotRegularError as exc:
        raise TarSplitError(f"{os.path.basename(tar_split)} {exc.strerror}") from None
    fault = legacy.layer_dir_fault(v1_id)
    files: ConfinedRoot | _MissingLayer
    files = _MissingLayer(fault) if fault else ConfinedRoot(legacy.layer_files(v1_id))
    try:
        with stream:
            return tarsplit.assemble(stream, files, write)
    finally:
        files.close()


def stream_layer(legacy: LegacyRoot, result: LayerResult, write: tarsplit.Write) -> None:
    """Pass the exact layer tar ``result`` describes to ``write``, in order, a chunk at a time.

    The tar is replayed from the tar-split stream the layer was hashed with (the recorded one,
    or the regenerated one), so it is the tar whose digest is ``result.diff_id``.

    Raises:
        LayerContentError: the layer no longer replays to that tar (its files changed or went
            missing since it was hashed); what ``write`` received must be thrown away.
    """
    try:
        assembly = _replay(legacy, result.v1_id, result.tar_split_path, write)
    except (MigrateError, OSError) as exc:
        raise LayerContentError(f"layer {result.v1_id}: {exc}") from exc
    if assembly.diff_id != result.diff_id or assembly.length != result.bytes_hashed:
        raise LayerContentError(
            f"layer {result.v1_id} changed while exported: it replays to {assembly.diff_id} "
            f"({assembly.length} bytes), not {result.diff_id} ({result.bytes_hashed} bytes)"
        )


def _regenerate(legacy: LegacyRoot, job: LayerJob) -> tarsplit.Assembly:
    layer_dir = legacy.layer_files(job.v1_id)
    # Imported here: only layers without a usable tar-split need it (start-up, issue 7).
    from migrate import archive  # noqa: PLC0415

    tmp = f"{job.regenerated_path}.{os.getpid()}.tmp"
    shown = os.path.relpath(job.regenerated_path, legacy.root)
    try:
        with open(tmp, "wb") as raw:
            out = cast(BinaryIO, _TargetFile(raw, shown))
            if legacy.driver == "aufs":
                assembly = archive.regenerate_aufs(layer_dir, out)
            else:
                parent = legacy.layer_files(job.parent_v1_id) if job.parent_v1_id else None
                assembly = archive.regenerate_naive(layer_dir, parent, out)
            raw.flush()
            os.fsync(raw.fileno())
        checkpoint("layer-regenerated")
        os.rename(tmp, job.regenerated_path)
        fsync_dir(os.path.dirname(job.regenerated_path))  # the ledger records it next
    except OSError as exc:
        raise TargetError(shown, exc.strerror or str(exc)) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return assembly


def _regeneration_fault(legacy: LegacyRoot, job: LayerJob) -> str | None:
    """Why the layer's directories cannot be archived (refused or missing), or None."""
    fault = legacy.layer_dir_fault(job.v1_id)
    if fault is None and legacy.driver != "aufs" and job.parent_v1_id:
        parent_fault = legacy.layer_dir_fault(job.parent_v1_id)
        fault = f"parent {parent_fault}" if parent_fault else None
    return fault


def hash_layer(job: LayerJob) -> LayerResult:
    """Identify one layer's content: replay its tar-split, else regenerate its tar.

    Raises:
        LayerContentError: neither works; the message names the cause of each failure.
        TargetError: the regenerated tar-split could not be written; the run must stop.
    """
    legacy = LegacyRoot(job.root, job.driver)
    started = time.monotonic()
    integrity_failed = False
    try:
        assembly = _replay(legacy, job.v1_id, legacy.tar_data(job.v1_id))
        source, path, note = TAR_SPLIT, legacy.tar_data(job.v1_id), ""
    except FileNotFoundError:
        note = "no tar-split recorded"
    except _NoLayerDirectory as exc:
        raise LayerContentError(str(exc)) from None  # nothing to regenerate from either
    except (MigrateError, OSError) as exc:
        note = _shown_error(exc)
        integrity_failed = isinstance(exc, IntegrityCheckError)
    if note:
        fault = _regeneration_fault(legacy, job)
        if fault is not None:
            raise LayerContentError(f"{note}; cannot regenerate: {fault}")
        try:
            assembly = _regenerate(legacy, job)
        except TargetError:
            raise
        except MigrateError as exc:
            raise LayerContentError(f"{note}; regeneration failed: {exc}") from None
        source, path = REGENERATED, job.regenerated_path
    seconds = time.monotonic() - started
    return LayerResult(
        job.v1_id,
        assembly.diff_id,
        assembly.size,
        source,
        path,
        assembly.length,
        seconds,
        note,
        integrity_failed,
    )


def _shown_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"reading tar-data.json.gz: {exc.strerror}"
    return str(exc)
