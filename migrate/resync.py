"""Catching the ledger up with the migrated store, which is the truth.

A layer whose layerdb entry a previous run wrote (``layerdb/sha256/<chain>/`` with its
``cache-id`` naming the legacy layer) is known without hashing it again, even when the ledger
never heard of it: the run that wrote the entry lost its ledger connection, or the host reported
to another ledger before. Only entries whose stored tar-split is a byte copy of the legacy one are
taken: their result is exactly what hashing would give again. A layer that had to be regenerated
is hashed again, which regenerates the same bytes and recovers the reason it was regenerated.
"""

from __future__ import annotations

import logging
import os

from migrate.digest import ChainID, DiffID, DigestError
from migrate.engine import ImageReport, LayerCache
from migrate.layers import TAR_SPLIT, LayerJob, LayerResult
from migrate.legacy import LegacyRoot

log = logging.getLogger(__name__)


class StoreLayers:
    """The layers of a root's migrated store, found by the legacy layer they were made from."""

    def __init__(self, legacy: LegacyRoot) -> None:
        self.legacy = legacy
        self._by_v1_id: dict[str, str] | None = None

    def _entries(self) -> dict[str, str]:
        """Legacy layer ID -> its layerdb directory, read once."""
        if self._by_v1_id is None:
            base = os.path.join(self.legacy.root, "image", self.legacy.driver, "layerdb", "sha256")
            found: dict[str, str] = {}
            for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
                cache_id = _read(os.path.join(base, name, "cache-id"))
                if cache_id is not None:
                    v1_id = cache_id.decode(errors="replace").strip()
                    found.setdefault(v1_id, os.path.join(base, name))
            self._by_v1_id = found
        return self._by_v1_id

    def layer(self, v1_id: str) -> LayerResult | None:
        """The result recorded in the store for legacy layer ``v1_id``, or None."""
        entry = self._entries().get(v1_id)
        if entry is None:
            return None
        stored = os.path.join(entry, "tar-split.json.gz")
        legacy_tar_split = self.legacy.tar_data(v1_id)
        if not _same_bytes(stored, legacy_tar_split):
            return None
        diff, size = _read(os.path.join(entry, "diff")), _read(os.path.join(entry, "size"))
        try:
            diff_id = DiffID.parse((diff or b"").decode().strip())
            content_size = int(size or b"")
        except (DigestError, ValueError, UnicodeDecodeError):
            return None
        return LayerResult(v1_id, diff_id, content_size, TAR_SPLIT, legacy_tar_split, 0, 0.0)


class ResyncingCache:
    """A layer cache that falls back to the store and records what it finds there."""

    def __init__(self, cache: LayerCache, store: StoreLayers) -> None:
        self.cache = cache
        self.store = store

    def cached_layer(self, job: LayerJob) -> LayerResult | None:
        """The ledger's result for ``job``; else the store's, recorded in the ledger first."""
        result = self.cache.cached_layer(job)
        if result is not None:
            return result
        result = self.store.layer(job.v1_id)
        if result is not None:
            self.cache.layer_done(job, result)
            log.info("recorded layer %s from the migrated store as %s", job.v1_id, result.diff_id)
        return result

    def layer_done(self, job: LayerJob, result: LayerResult) -> None:
        self.cache.layer_done(job, result)

    def layer_registered(self, v1_id: str, chain: ChainID, tar_split_path: str) -> None:
        self.cache.layer_registered(v1_id, chain, tar_split_path)

    def image_done(self, report: ImageReport) -> None:
        self.cache.image_done(report)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(4096)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _same_bytes(a: str, b: str) -> bool:
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while chunk := fa.read(1 << 20):
                if chunk != fb.read(len(chunk)):
                    return False
        return True
    except FileNotFoundError:
        return False
