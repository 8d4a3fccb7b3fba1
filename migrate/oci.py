"""OCI image-spec documents for exported images: configs, descriptors, manifests and the index.

A Docker 1.10 image config is already an OCI image config in all but a few details, so the
export keeps its bytes and with them its digest, which is the image ID: an image copied from the
OCI layout back into Docker keeps the ID the migration gave it. The one exception is a value the
OCI schema forbids: Docker wrote an unset ``Env`` (and, from older clients, other unset
members) as ``null``, where the OCI schema wants an array or string or nothing. Those members
are dropped, every other byte kept in place, and such an image's config digest then differs from
its Docker image ID. A config without ``architecture`` or ``os`` (written by Docker before 1.0)
gets Docker's defaults, ``amd64`` and ``linux``, which the OCI schema requires.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from migrate import gojson
from migrate.digest import Digest
from migrate.gojson import encode_string

LAYOUT_VERSION = "1.0.0"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

REF_NAME = "org.opencontainers.image.ref.name"
# containerd names an imported image after this annotation before it looks at the ref name.
CONTAINERD_NAME = "io.containerd.image.name"

# Members the OCI config schema types without null (config-schema.json).
_NOT_NULL_TOP = ("created", "author", "architecture", "variant", "os", "os.version")
_NOT_NULL_CONFIG = ("User", "ExposedPorts", "Env", "WorkingDir", "StopSignal", "ArgsEscaped")
_DEFAULT_PLATFORM = (("architecture", b'"amd64"'), ("os", b'"linux"'))


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its exact size."""

    media_type: str
    digest: Digest
    size: int

    def to_json(self) -> dict[str, Any]:
        """The descriptor as a JSON-ready mapping."""
        return {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}


def oci_config(raw_config: bytes) -> bytes:
    """The OCI image config for the Docker image config ``raw_config``.

    The result is ``raw_config`` itself unless it holds a value the OCI schema forbids (see the
    module docstring).

    Raises:
        ValueError: ``raw_config`` is not a JSON object.
    """
    top = list(gojson.parse(raw_config).members())
    members = [(key, value.raw) for key, value in top if not _forbidden_null(key, value.raw)]
    changed = len(members) != len(top)
    for index, (key, raw) in enumerate(members):
        if key == "config" and raw.lstrip().startswith(b"{"):
            kept = _config_without_nulls(raw)
            changed = changed or kept != raw
            members[index] = (key, kept)
    present = {key for key, _ in members}
    for key, default in _DEFAULT_PLATFORM:
        if key not in present:
            members.append((key, default))
            changed = True
    if not changed:
        return raw_config
    return gojson.marshal_object(dict(members))


def _forbidden_null(key: str, raw: bytes) -> bool:
    return key in _NOT_NULL_TOP and raw.strip() == b"null"


def _config_without_nulls(raw: bytes) -> bytes:
    """The ``config`` object without its forbidden nulls, members kept in their order."""
    members = list(gojson.parse(raw).members())
    kept = [
        (key, value.raw)
        for key, value in members
        if not (key in _NOT_NULL_CONFIG and value.raw.strip() == b"null")
    ]
    if len(kept) == len(members):
        return raw
    body = b",".join(encode_string(key) + b":" + gojson.compact(value) for key, value in kept)
    return b"{" + body + b"}"


def platform(raw_config: bytes) -> dict[str, str]:
    """The ``platform`` of an index entry: the OCI config's architecture and os."""
    found = {
        key: value.text()
        for key, value in gojson.parse(raw_config).members()
        if key in ("architecture", "os") and value.kind == "string"
    }
    return {"architecture": found.get("architecture", "amd64"), "os": found.get("os", "linux")}


def manifest_json(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    """The bytes of an image manifest for ``config`` and ``layers`` (base layer first)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    return _dump(manifest)


def index_entry(
    manifest: Descriptor, platform_fields: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any]:
    """One ``manifests`` member of ``index.json``."""
    entry = manifest.to_json()
    if annotations:
        entry["annotations"] = dict(annotations)
    entry["platform"] = dict(platform_fields)
    return entry


def index_json(entries: Sequence[Mapping[str, Any]]) -> bytes:
    """The bytes of ``index.json`` listing ``entries``."""
    return _dump({"schemaVersion": 2, "mediaType": INDEX, "manifests": list(entries)})


def layout_json() -> bytes:
    """The bytes of the ``oci-layout`` file."""
    return _dump({"imageLayoutVersion": LAYOUT_VERSION})


def _dump(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
