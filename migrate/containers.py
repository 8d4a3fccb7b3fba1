"""Legacy container configs to ``config.v2.json`` (migration spec 1.5, 3.7).

Docker 1.10 read ``containers/<id>/config.json`` as a map of raw top-level values, replaced only
``Image`` (the legacy v1 ID) by the new image ID and wrote the map back with sorted keys. Every
other value is kept as written, only compacted and HTML-escaped.
"""

from __future__ import annotations

from migrate import gojson
from migrate.digest import ImageID
from migrate.errors import FormatError
from migrate.gojson import encode_string


class MissingImageError(FormatError):
    """A container config has no top-level ``Image`` key.

    Docker 1.10 treated this as fatal to the whole container phase, and then migrated no tags;
    every other container problem only skipped that container.
    """


def container_image(raw_config: bytes) -> str:
    """The legacy image (v1 ID) a container was created from: its top-level ``Image``.

    A ``null`` ``Image`` reads as ``""`` (Go leaves the string empty); no image has that ID.

    Raises:
        MissingImageError: the config is ``null`` or has no ``Image`` key.
        ValueError: the config is not JSON, not an object, or ``Image`` is not a string.
    """
    top = gojson.parse(raw_config)
    if top.kind == "null":
        raise MissingImageError("config.json is null, so it has no Image")
    if top.kind != "object":
        raise FormatError(f"config.json is a JSON {top.kind}, not an object")
    image = None
    for key, value in top.members():
        if key == "Image":
            image = value
    if image is None:
        raise MissingImageError("config.json has no Image")
    if image.kind == "null":
        return ""
    if image.kind != "string":
        raise FormatError(f"Image is a JSON {image.kind}, not a string")
    return image.text()


def rewrite_container_config(raw_config: bytes, image_id: ImageID) -> bytes:
    """The ``config.v2.json`` bytes: the legacy config pointing at ``image_id`` (spec 3.7 step 5).

    Raises:
        ValueError: the config is not a JSON object.
    """
    fields = gojson.split_object(raw_config)
    fields["Image"] = encode_string(str(image_id))
    return gojson.marshal_object(fields)
