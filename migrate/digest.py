"""Content identifiers: digests, diff IDs, chain IDs and image IDs.

Each kind of identifier is its own immutable type so that a diff ID can never be passed where a
chain ID is expected. All render as ``algorithm:hex`` and parse strictly, the way Docker's
``digest.ParseDigest`` does (no surrounding whitespace, lower-case hex of the right length).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

from migrate.errors import MigrateError

_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_RE = re.compile(r"\A(sha256|sha384|sha512):([a-f0-9]+)\Z")
_V1_ID_RE = re.compile(r"\A[a-f0-9]{64}\Z")


class DigestError(MigrateError):
    """A string that should be a digest is not one."""


@dataclass(frozen=True, slots=True)
class Digest:
    """A content digest such as ``sha256:5f70bf18…``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse ``algorithm:hex`` exactly; raise DigestError otherwise."""
        match = _DIGEST_RE.match(text)
        if match is None or len(match.group(2)) != _HEX_LENGTH[match.group(1)]:
            raise DigestError(f"invalid digest {text!r}")
        return cls(match.group(1), match.group(2))

    @classmethod
    def of(cls, data: bytes) -> Self:
        """The sha256 digest of ``data``."""
        return cls("sha256", hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class BlobDigest(Digest):
    """Digest of a stored (usually compressed) blob, as a registry names it."""


class DiffID(Digest):
    """Digest of a layer's uncompressed tar."""


class ChainID(Digest):
    """Identity of a stack of layers: the diff IDs folded from the base up."""


class ImageID(Digest):
    """Digest of an image config's exact bytes."""


EMPTY_TAR_DIFF_ID = DiffID(
    "sha256", "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
)


def chain_id(parent: ChainID | None, diff_id: DiffID) -> ChainID:
    """The chain ID of ``diff_id`` applied on top of the stack ``parent``."""
    if parent is None:
        return ChainID(diff_id.algorithm, diff_id.hex)
    return ChainID.of(f"{parent} {diff_id}".encode())


def chain_ids(diff_ids: Iterable[DiffID]) -> list[ChainID]:
    """The chain ID of every prefix of ``diff_ids``, base first."""
    result: list[ChainID] = []
    for diff_id in diff_ids:
        result.append(chain_id(result[-1] if result else None, diff_id))
    return result


def is_v1_id(name: str) -> bool:
    """Whether ``name`` is a legacy image ID: exactly 64 lower-case hex digits."""
    return _V1_ID_RE.match(name) is not None
