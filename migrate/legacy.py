"""Reading a legacy (pre-1.10) Docker root: the graph, its drivers, tags and containers.

This is the only module that knows the old layout (``graph/<v1 id>/``, ``repositories-<driver>``,
``containers/<id>/config.json`` and each storage driver's directories). It only ever reads.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from migrate.digest import is_v1_id
from migrate.errors import LegacyDataError, UsageError

KNOWN_DRIVERS = ("aufs", "overlay", "vfs", "btrfs", "devicemapper", "zfs")
SUPPORTED_DRIVERS = ("aufs", "overlay", "vfs", "btrfs")

# Larger legacy metadata than this is not a Docker-written file; refusing it keeps memory bounded.
MAX_METADATA_BYTES = 16 << 20


def detect_driver(root: str) -> str:
    """The storage driver of ``root``: the one known driver directory that exists."""
    if not os.path.isdir(root):
        raise UsageError(f"{root}: no such directory")
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
    """Read a legacy metadata file whole, refusing anything implausibly large.

    The file must be a regular file, not a symlink: a legacy root is untrusted input, and a
    planted link or fifo must neither lead the read outside the root nor make it wait.
    """
    name = os.path.basename(path)
    try:
        fh = open_regular(path)
    except FileNotFoundError:
        raise LegacyDataError(subject, f"{name} is missing") from None
    except NotRegularError as exc:
        raise LegacyDataError(subject, f"{name} {exc.strerror}") from None
    except OSError as exc:
        raise LegacyDataError(subject, f"cannot read {name}: {exc.strerror}") from None
    with fh:
        if os.fstat(fh.fileno()).st_size > MAX_METADATA_BYTES:
            raise LegacyDataError(subject, f"{name} is larger than the {_LIMIT_SHOWN} limit")
        try:
            data = fh.read(MAX_METADATA_BYTES + 1)
        except OSError as exc:
            raise LegacyDataError(subject, f"cannot read {name}: {exc.strerror}") from None
    if len(data) > MAX_METADATA_BYTES:  # it grew while we read it
        raise LegacyDataError(subject, f"{name} is larger than the {_LIMIT_SHOWN} limit")
    return data


_LIMIT_SHOWN = f"{MAX_METADATA_BYTES >> 20} MiB"
# O_NONBLOCK: opening a fifo must not wait for a writer; fstat refuses it right after.
_LEAF_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotRegularError(OSError):
    """A legacy file is a symlink, a directory or a special file; its text says which."""


def open_regular(path: str) -> BinaryIO:
    """Open the regular file ``path`` for reading without following a symlink at its end.

    Raises:
        FileNotFoundError: nothing is there.
        NotRegularError: a symlink, directory, fifo, socket or device is there.
        OSError: it cannot be opened.
    """
    try:
        fd = os.open(path, _LEAF_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularError(exc.errno, "is a symbolic link") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise NotRegularError(errno.EINVAL, f"is {kind}")
    os.set_blocking(fd, True)
    return open(fd, "rb")


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

    def layer_dir_fault(self, graph_id: str) -> str | None:
        """Why layer ``graph_id``'s directory cannot be read, or None when it is a directory.

        The driver's own directories are trusted (operators move them with symlinks); from
        the layer's directory down, a symlink is refused, so it cannot lead outside the root.
        """
        base = os.path.join(self.root, self.driver)
        path = self.layer_files(graph_id)
        parts = os.path.relpath(path, base).split(os.sep)
        for depth in range(2 if self.driver in ("aufs", "vfs", "btrfs") else 1, len(parts) + 1):
            shown = os.path.join(self.driver, *parts[:depth])
            try:
                mode = os.lstat(os.path.join(base, *parts[:depth])).st_mode
            except FileNotFoundError:
                return f"layer directory {shown} is missing"
            except OSError as exc:
                return f"cannot read layer directory {shown}: {exc.strerror}"
            if stat.S_ISLNK(mode):
                return f"layer directory {shown} is a symbolic link"
            if not stat.S_ISDIR(mode):
                return f"layer directory {shown} is not a directory"
        return None

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
            with open_regular(os.path.join(self.image_dir(v1_id), "layersize")) as fh:
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
