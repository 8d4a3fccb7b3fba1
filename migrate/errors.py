"""The project's error types.

Every error the tool raises on purpose derives from :class:`MigrateError`; the CLI catches that
base once, prints one line naming the object and the cause, and exits non-zero.
"""

from __future__ import annotations


class MigrateError(Exception):
    """Base of every error graph-migrate reports to its user."""


class UsageError(MigrateError):
    """The command line or the environment does not allow the work to start."""


class FormatError(MigrateError, ValueError):
    """Bytes do not parse as the format expected (legacy JSON, a tag file, a container config).

    It is a ValueError too, so the parsers' callers may treat it as the bad value it is.
    """


class LegacyDataError(MigrateError):
    """Legacy metadata (an image's json, a tag file, a container config) is unusable."""

    def __init__(self, subject: str, cause: str) -> None:
        super().__init__(f"{subject}: {cause}")
        self.subject = subject
        self.cause = cause


class TarSplitError(MigrateError):
    """A tar-split stream could not be read or replayed against the layer's files."""


class IntegrityCheckError(TarSplitError):
    """A layer file no longer has the CRC-64 its tar-split stream recorded: it changed on disk."""


class ConfinementError(TarSplitError):
    """A layer's entry name would lead outside its layer root, or is not a regular file."""


class LayerContentError(MigrateError):
    """A layer's content could neither be replayed nor regenerated."""


class TargetError(MigrateError):
    """Writing the new store failed (a full disk, a read-only file system): the run stops."""

    def __init__(self, path: str, cause: str) -> None:
        super().__init__(f"writing {path}: {cause}")
        self.path = path
        self.cause = cause

    def __reduce__(self) -> tuple[type[TargetError], tuple[str, str]]:
        return TargetError, (self.path, self.cause)  # layer hashing raises it in worker processes
