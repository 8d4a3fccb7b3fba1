"""Computing a legacy layer's diff ID: tar-split replay first, regeneration when it fails.

Runs in worker processes, so everything here takes and returns plain picklable values.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import BinaryIO

from migrate import tarsplit
from migrate.confine import ConfinedRoot
from migrate.digest import DiffID
from migrate.errors import MigrateError, TarSplitError
from migrate.legacy import LegacyRoot

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


class _MissingLayer:
    """Stands in for a layer directory that does not exist.

    Replay only opens files with content, so a layer made of directories and empty files
    still replays without its directory, as it did in Docker.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def open(self, name: bytes) -> BinaryIO:
        raise TarSplitError(f"layer directory {self.path} is missing (needed for {name!r})")

    def close(self) -> None:
        pass


def _replay(legacy: LegacyRoot, v1_id: str) -> tarsplit.Assembly:
    files_dir = legacy.layer_files(v1_id)
    files: ConfinedRoot | _MissingLayer
    files = ConfinedRoot(files_dir) if os.path.isdir(files_dir) else _MissingLayer(files_dir)
    try:
        with open(legacy.tar_data(v1_id), "rb") as stream:
            return tarsplit.assemble(stream, files)
    finally:
        files.close()


def _regenerate(legacy: LegacyRoot, job: LayerJob) -> tarsplit.Assembly:
    layer_dir = legacy.layer_files(job.v1_id)
    if not os.path.isdir(layer_dir):
        raise MigrateError(f"layer directory {layer_dir} is missing")
    # Imported here: only layers without a usable tar-split need it (start-up, issue 7).
    from migrate import archive  # noqa: PLC0415

    tmp = f"{job.regenerated_path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            if legacy.driver == "aufs":
                assembly = archive.regenerate_aufs(layer_dir, out)
            else:
                parent = legacy.layer_files(job.parent_v1_id) if job.parent_v1_id else None
                if parent is not None and not os.path.isdir(parent):
                    raise MigrateError(f"parent layer directory {parent} is missing")
                assembly = archive.regenerate_naive(layer_dir, parent, out)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, job.regenerated_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return assembly


def hash_layer(job: LayerJob) -> LayerResult:
    """Identify one layer's content; raise MigrateError when neither way works."""
    legacy = LegacyRoot(job.root, job.driver)
    started = time.monotonic()
    try:
        assembly = _replay(legacy, job.v1_id)
        source, path, note = TAR_SPLIT, legacy.tar_data(job.v1_id), ""
    except FileNotFoundError:
        note = "no tar-split recorded"
    except (MigrateError, OSError) as exc:
        note = str(exc)
    if note:
        try:
            assembly = _regenerate(legacy, job)
        except OSError as exc:
            raise MigrateError(f"layer {job.v1_id}: {note}; regeneration failed: {exc}") from exc
        except MigrateError as exc:
            raise MigrateError(f"layer {job.v1_id}: {note}; regeneration failed: {exc}") from exc
        source, path = REGENERATED, job.regenerated_path
    seconds = time.monotonic() - started
    return LayerResult(
        job.v1_id, assembly.diff_id, assembly.size, source, path, assembly.length, seconds, note
    )
