"""Legacy tags to Docker 1.10 references and ``repositories.json`` (migration spec 2.5, 3.8).

The legacy tag file maps a repository name to ``{tag or digest: v1 ID}``. Each entry whose image
was migrated becomes the reference ``name:tag`` or ``name@digest`` under the 1.10 normalised
name; the others are dropped, with the reason kept so that nothing disappears silently.

Docker 1.10 walked the legacy names in Go's random map order, so when two legacy names
normalise to the same reference the winner was chance. Here the legacy names and then their
tags are walked in sorted order: the first one wins, the later ones are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from migrate import gojson
from migrate.digest import DigestError, ImageID, is_v1_id
from migrate.distribution import parse_go_digest
from migrate.errors import FormatError
from migrate.gojson import Value, encode_string
from migrate.imageconfig import fold_key

DEFAULT_HOSTNAME = "docker.io"
LEGACY_DEFAULT_HOSTNAME = "index.docker.io"
OFFICIAL_PREFIX = "library/"
NAME_MAX_LENGTH = 255

# docker/distribution's reference grammar of the 1.10 era. A name component is lower-case
# alphanumeric runs joined by ".", "_", "__" or dashes; written without empty separators so that
# Python's backtracking engine stays linear where Go's RE2 is.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_COMPONENT = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST = rf"{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]+)?"
_NAME_RE = re.compile(rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}")

# The reference store refuses this name: "sha256:…" would read as an image ID.
_AMBIGUOUS_NAME = "sha256"


@dataclass(frozen=True, slots=True)
class TagOutcome:
    """What the tag migration produced and what it left out."""

    references: dict[str, dict[str, ImageID]]  # normalised name -> full reference -> image
    dropped: list[tuple[str, str, str]]  # (legacy name, tag or digest, reason)


def normalize_name(name: str) -> str:
    """The repository name Docker 1.10 stores for the legacy ``name`` (``reference.WithName``).

    ``docker.io/`` and ``index.docker.io/`` are removed, and ``library/`` for official images.

    Raises:
        ValueError: the name is not a valid lower-case repository name, or is 64 hex digits.
    """
    normalised = _strip_default_host(name)
    if is_v1_id(normalised):
        raise FormatError(f"invalid repository name {name!r}: it looks like an image ID")
    if len(normalised.encode("utf-8", "surrogatepass")) > NAME_MAX_LENGTH:
        raise FormatError(f"invalid repository name {name!r}: longer than {NAME_MAX_LENGTH}")
    if _NAME_RE.fullmatch(normalised) is None:
        raise FormatError(f"invalid repository name {name!r}")
    return normalised


def _strip_default_host(name: str) -> str:
    slash = name.find("/")
    if slash == -1 or (not any(c in name[:slash] for c in ".:") and name[:slash] != "localhost"):
        host, remote = DEFAULT_HOSTNAME, name
    else:
        host, remote = name[:slash], name[slash + 1 :]
    if host == LEGACY_DEFAULT_HOSTNAME:
        host = DEFAULT_HOSTNAME
    if host != DEFAULT_HOSTNAME:
        return name
    if "/" not in remote:
        return remote
    return remote.removeprefix(OFFICIAL_PREFIX)


def migrate_tags(raw_repositories: bytes, mapping: Mapping[str, ImageID]) -> TagOutcome:
    """The references to create from a legacy ``repositories-<driver>`` file.

    Args:
        raw_repositories: the legacy tag file.
        mapping: legacy v1 ID -> new image ID of every migrated image.

    Raises:
        ValueError: the file is not what Docker 1.10 could decode; Docker then migrated no tag.
    """
    references: dict[str, dict[str, ImageID]] = {}
    winners: dict[str, str] = {}
    dropped: list[tuple[str, str, str]] = []
    repositories = _decode_repositories(gojson.parse_first(raw_repositories))
    for legacy_name in sorted(repositories, key=_utf8):
        tags = repositories[legacy_name]
        for tag in sorted(tags, key=_utf8):
            image_id = mapping.get(tags[tag])
            if image_id is None:
                dropped.append((legacy_name, tag, f"image {tags[tag]} was not migrated"))
                continue
            try:
                name, ref = _reference(legacy_name, tag)
            except ValueError as exc:
                dropped.append((legacy_name, tag, str(exc)))
                continue
            if ref in winners:
                dropped.append((legacy_name, tag, f"{ref} is already set by {winners[ref]!r}"))
                continue
            references.setdefault(name, {})[ref] = image_id
            winners[ref] = legacy_name
    return TagOutcome(references, dropped)


def _reference(legacy_name: str, tag: str) -> tuple[str, str]:
    """The normalised name and full reference for one legacy entry; ValueError when invalid."""
    name = normalize_name(legacy_name)
    if name == _AMBIGUOUS_NAME:
        raise FormatError(f"repository name {name!r} is ambiguous with a digest algorithm")
    if parse_go_digest(tag) is not None:
        return name, f"{name}@{tag}"
    if _TAG_RE.fullmatch(tag) is None:
        raise FormatError(f"invalid tag {tag!r}")
    return name, f"{name}:{tag}"


def repositories_json(references: Mapping[str, Mapping[str, ImageID]]) -> bytes:
    """``repositories.json`` exactly as Docker 1.10's reference store writes it."""
    names = sorted(references, key=_utf8)
    members = (encode_string(name) + b":" + _repository_json(references[name]) for name in names)
    return b'{"Repositories":{' + b",".join(members) + b"}}"


def _repository_json(repository: Mapping[str, ImageID]) -> bytes:
    refs = sorted(repository, key=_utf8)
    members = (encode_string(ref) + b":" + encode_string(str(repository[ref])) for ref in refs)
    return b"{" + b",".join(members) + b"}"


def parse_repositories_json(raw: bytes) -> dict[str, dict[str, ImageID]]:
    """The references of an existing ``repositories.json``.

    Raises:
        ValueError: the file is not JSON of the store's shape, or a value is not an image ID.
    """
    repositories = _decode_repositories(gojson.parse_first(raw))
    try:
        return {
            name: {ref: ImageID.parse(text) for ref, text in repository.items()}
            for name, repository in repositories.items()
        }
    except DigestError as exc:
        raise FormatError(str(exc)) from None


def legacy_tags(raw_repositories: bytes) -> dict[str, dict[str, str]]:
    """A legacy tag file as Docker 1.10 decoded it: name -> {tag or digest: v1 ID}.

    Raises:
        ValueError: the file is not what Docker 1.10 could decode.
    """
    return _decode_repositories(gojson.parse_first(raw_repositories))


def _decode_repositories(top: Value) -> dict[str, dict[str, str]]:
    """Decode ``{"Repositories": {name: {key: value}}}`` with Go's struct and map rules.

    A second ``Repositories`` key adds to the first (Go reuses the map), while a repeated name
    replaces the earlier one (Go decodes each map value afresh).
    """
    if top.kind == "null":
        return {}
    if top.kind != "object":
        raise FormatError(f"expected a JSON object, found {top.kind}")
    result: dict[str, dict[str, str]] = {}
    for key, value in top.members():
        if fold_key(key) != "repositories":
            continue
        if value.kind == "null":
            result = {}
        elif value.kind != "object":
            raise FormatError(f"Repositories: expected an object, found {value.kind}")
        else:
            for name, repository in value.members():
                result[name] = _decode_repository(name, repository)
    return result


def _decode_repository(name: str, repository: Value) -> dict[str, str]:
    if repository.kind == "null":
        return {}
    if repository.kind != "object":
        raise FormatError(f"repository {name!r}: expected an object, found {repository.kind}")
    tags: dict[str, str] = {}
    for tag, value in repository.members():
        if value.kind not in ("string", "null"):
            raise FormatError(f"repository {name!r} tag {tag!r}: expected a string")
        tags[tag] = value.text() if value.kind == "string" else ""
    return tags


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")
