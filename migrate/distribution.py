"""Distribution metadata and the v1 → image ID map, as Docker 1.10 wrote them (spec 2.6, 2.7).

A legacy layer pulled from a v2 registry has a ``checksum`` file naming its blob digest; the
migration records that digest against the layer's new diff ID in both directions. The map file
``.migration-v1-images.json`` records which legacy images became which new images.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from migrate import gojson
from migrate.digest import BlobDigest, DiffID, ImageID
from migrate.errors import FormatError
from migrate.gojson import Value, encode_string
from migrate.imageconfig import fold_key

# Docker keeps at most this many blob digests per diff ID, the newest last.
MAX_V2_METADATA = 50

# distribution's digest.ParseDigest of the 1.10 era: upper-case hex is accepted, the anchors
# allow no trailing newline, and only these algorithms with their exact lengths pass.
_DIGEST_RE = re.compile(r"[a-zA-Z0-9\-_+.]+:[a-fA-F0-9]+")
_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}


def parse_go_digest(text: str) -> BlobDigest | None:
    """``text`` as a digest when Docker 1.10's ``digest.ParseDigest`` accepts it, else None."""
    if _DIGEST_RE.fullmatch(text) is None:
        return None
    algorithm, hex_digits = text.split(":", 1)
    if _HEX_LENGTH.get(algorithm) != len(hex_digits):
        return None
    return BlobDigest(algorithm, hex_digits)


def parse_checksum(raw: bytes) -> BlobDigest | None:
    """The blob digest in a legacy ``checksum`` file, None when Docker ignored the file.

    The bytes are taken exactly (spec 3.4 step 8): a trailing newline, a ``tarsum`` value or a
    wrong length makes the file unusable, and the layer then gets no distribution metadata.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return parse_go_digest(text)


def add_v2_metadata(existing: bytes | None, digest: BlobDigest) -> bytes:
    """The ``v2metadata-by-diffid`` file after recording ``digest`` for its diff ID.

    Args:
        existing: the current file, or None when there is none.
        digest: the blob digest to record.

    Returns:
        A JSON array of ``{"Digest":…,"SourceRepository":""}`` objects: the existing entries
        other than this one, then this one, at most :data:`MAX_V2_METADATA` of them. Existing
        content that Docker could not decode is replaced, as Docker did.
    """
    entry = (str(digest), "")
    entries = [old for old in _decode_v2_metadata(existing) if old != entry]
    entries.append(entry)
    members = (
        b'{"Digest":' + encode_string(d) + b',"SourceRepository":' + encode_string(s) + b"}"
        for d, s in entries[-MAX_V2_METADATA:]
    )
    return b"[" + b",".join(members) + b"]"


def diffid_by_digest(diff_id: DiffID) -> bytes:
    """The ``diffid-by-digest`` file content: the diff ID, no newline."""
    return str(diff_id).encode()


def images_map_json(mapping: Mapping[str, ImageID]) -> bytes:
    """The ``.migration-v1-images.json`` bytes: Go's JSON encoding, keys sorted, one newline."""
    keys = sorted(mapping, key=lambda key: key.encode("utf-8", "surrogatepass"))
    members = (encode_string(key) + b":" + encode_string(str(mapping[key])) for key in keys)
    return b"{" + b",".join(members) + b"}\n"


def parse_images_map(raw: bytes) -> dict[str, str]:
    """The v1 → image ID map of a ``.migration-v1-images.json``, read as Docker 1.10 read it.

    Only the first JSON value counts and ``null`` is an empty map. Values are returned as
    written: Docker did not check that they are image IDs.

    Raises:
        ValueError: the file is empty, not JSON, or not an object of strings.
    """
    top = gojson.parse_first(raw)
    if top.kind == "null":
        return {}
    if top.kind != "object":
        raise FormatError(f"expected a JSON object, found {top.kind}")
    result: dict[str, str] = {}
    for key, value in top.members():
        if value.kind not in ("string", "null"):
            raise FormatError(f"{key!r}: expected a string, found {value.kind}")
        result[key] = value.text() if value.kind == "string" else ""
    return result


def _decode_v2_metadata(existing: bytes | None) -> list[tuple[str, str]]:
    """The entries of an existing file; [] when Docker's decoding would have failed."""
    if existing is None:
        return []
    try:
        top = gojson.parse(existing)
        if top.kind == "null":
            return []
        if top.kind != "array":
            return []
        return [_decode_v2_entry(element) for element in top.elements()]
    except ValueError:
        return []


def _decode_v2_entry(element: Value) -> tuple[str, str]:
    if element.kind == "null":
        return "", ""
    if element.kind != "object":
        raise FormatError(f"expected an object, found {element.kind}")
    fields = {"digest": "", "sourcerepository": ""}
    for key, value in element.members():
        name = fold_key(key)
        if name not in fields or value.kind == "null":
            continue
        if value.kind != "string":
            raise FormatError(f"{key}: expected a string, found {value.kind}")
        fields[name] = value.text()
    return fields["digest"], fields["sourcerepository"]
