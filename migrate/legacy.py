"""Reading a legacy (pre-1.10) Docker root: the graph, its drivers, tags and containers.

This is the only module that knows the old layout (``graph/<v1 id>/``, ``repositories-<driver>``,
``containers/<id>/config.json`` and each storage driver's directories). It only ever reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from migrate.digest import is_v1_id
from migrate.errors import LegacyDataError, UsageError

KNOWN_DRIVERS = ("aufs", "overlay", "vfs", "btrfs", "devicemapper", "zfs")
SUPPORTED_DRIVERS = ("aufs", "overlay", "vfs", "btrfs")

# Larger legacy metadata than this is not a Docker-written file; refusing it keeps memory bounded.
MAX_METADATA_BYTES = 16 << 20


def detect_driver(root: str) -> str:
    """The storage driver of ``root``: the one known driver directory that exists."""
    present = [name for name in KNOWN_DRIVERS if os.path.isdir(os.path.join(root, name))]
    if not present:
        raise UsageError(f"{root}: no storage driver directory found ({', '.join(KNOWN_DRIVERS)})")
    if len(present) > 1:
        raise UsageError(
            f"{root}: several storage driver directories found ({', '.join(present)}); "
            "choose one with --driver"
        )
    return present[0]


def check_driver(root: str, driver: str) -> None:
    """Refuse drivers this tool cannot read, and a driver whose directory is absent."""
    if driver not in KNOWN_DRIVERS:
        raise UsageError(f"unknown storage driver {driver!r}")
    if driver not in SUPPORTED_DRIVERS:
        # TODO(#4): devicemapper and zfs need their devices activated and mounted to read
        # layer files; until then such hosts cannot be migrated by this tool at all.
        raise UsageError(f"storage driver {driver} is not supported yet")
    if not os.path.isdir(os.path.join(root, driver)):
        raise UsageError(f"{root}: no {driver} directory")


def read_small(path: str, subject: str) -> bytes:
    """Read a legacy metadata file whole, refusing anything implausibly large."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_METADATA_BYTES + 1)
    except FileNotFoundError:
        raise LegacyDataError(subject, f"{os.path.basename(path)} is missing") from None
    except OSError as exc:
        raise LegacyDataError(subject, f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_METADATA_BYTES:
        raise LegacyDataError(subject, f"{path} is larger than {MAX_METADATA_BYTES} bytes")
    return data


@dataclass(frozen=True, slots=True)
class LegacyRoot:
    """A legacy Docker root read through one storage driver."""

    root: str
    driver: str

    @property
    def graph(self) -> str:
        return os.path.join(self.root, "graph")

    def has_graph(self) -> bool:
        return os.path.isdir(self.graph)

    def image_ids(self) -> tuple[list[str], list[str]]:
        """Legacy image IDs in name order, and the other names found in ``graph/``."""
        names = sorted(os.listdir(self.graph))
        valid = [name for name in names if is_v1_id(name)]
        ignored = [name for name in names if not is_v1_id(name)]
        return valid, ignored

    def image_dir(self, v1_id: str) -> str:
        return os.path.join(self.graph, v1_id)

    def image_json(self, v1_id: str) -> bytes:
        return read_small(os.path.join(self.image_dir(v1_id), "json"), f"image {v1_id}")

    def parent_file(self, v1_id: str) -> str:
        """The ``parent`` file's content (it overrides the json's parent), or ""."""
        path = os.path.join(self.image_dir(v1_id), "parent")
        if not os.path.exists(path):
            return ""
        return read_small(path, f"image {v1_id}").decode("utf-8", "replace")

    def checksum(self, v1_id: str) -> bytes | None:
        path = os.path.join(self.image_dir(v1_id), "checksum")
        try:
            return read_small(path, f"image {v1_id}")
        except LegacyDataError:
            return None

    def tar_data(self, v1_id: str) -> str:
        return os.path.join(self.image_dir(v1_id), "tar-data.json.gz")

    def layer_files(self, graph_id: str) -> str:
        """The directory tar-split replay reads layer ``graph_id``'s file bodies from."""
        base = os.path.join(self.root, self.driver)
        return {
            "aufs": os.path.join(base, "diff", graph_id),
            "overlay": os.path.join(base, graph_id, "root"),
            "vfs": os.path.join(base, "dir", graph_id),
            "btrfs": os.path.join(base, "subvolumes", graph_id),
        }[self.driver]

    def has_layer(self, graph_id: str) -> bool:
        """Whether the driver holds a layer (or container layer) named ``graph_id``."""
        base = os.path.join(self.root, self.driver)
        return os.path.isdir(
            {
                "aufs": os.path.join(base, "diff", graph_id),
                "overlay": os.path.join(base, graph_id),
                "vfs": os.path.join(base, "dir", graph_id),
                "btrfs": os.path.join(base, "subvolumes", graph_id),
            }[self.driver]
        )

    def layer_size_hint(self, v1_id: str) -> int:
        """A cheap estimate of a layer's content size, to hash the largest layers first."""
        try:
            with open(os.path.join(self.image_dir(v1_id), "layersize"), "rb") as fh:
                return int(fh.read(32).strip() or b"0")
        except (OSError, ValueError):
            return 0

    def repositories(self) -> str:
        return os.path.join(self.root, f"repositories-{self.driver}")

    def container_ids(self) -> list[str]:
        path = os.path.join(self.root, "containers")
        if not os.path.isdir(path):
            return []
        return sorted(os.listdir(path))

    def container_config(self, container_id: str) -> bytes:
        path = os.path.join(self.root, "containers", container_id, "config.json")
        return read_small(path, f"container {container_id}")
