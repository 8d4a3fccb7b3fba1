"""Legacy image JSON to Docker 1.10 image config, byte for byte (migration spec 3.5).

Docker 1.10 read each legacy ``graph/<id>/json`` three times with Go's ``encoding/json``: for
the parent (spec 3.2), for the history item and for the config. A JSON type error in any field
those reads know fails the image, so :func:`parse_legacy_image` decodes the same fields with the
same rules: keys match field names case-insensitively, ``null`` leaves a field as it was, a key
given twice decodes twice (maps merge, slices reuse their storage), strings are decoded the Go
way, and ``created`` is parsed by Go 1.5's RFC 3339 parser (the Go of the 1.10.3 release).

:func:`make_config` then builds the config: legacy JSON written by Docker older than 1.8.3 is
first re-marshalled through Go's ``V1Image`` struct (engine-api v0.2.3 ``container.Config``),
newer JSON keeps its raw values.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from migrate import gojson
from migrate.digest import DiffID, DigestError
from migrate.errors import FormatError
from migrate.gojson import Value, encode_string

ZERO_TIME = "0001-01-01T00:00:00Z"

# Docker wrote the legacy JSON through a struct from 1.8.3 on; older JSON is normalised first.
_NO_FALLBACK_VERSION = "1.8.3"

# Top-level keys MakeConfigFromV1Config removes (exact, case-sensitive).
_DROPPED_KEYS = ("id", "parent", "Size", "parent_id", "layer_id", "throwaway")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT64_RE = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_GO_INT_RE = re.compile(r"[+-]?[0-9]+")

# Go 1.5 time.Parse(`"`+RFC3339+`"`, token): hour may have one digit, a fraction any number of
# digits, the offset's hour and minute fields are atoi'd (so "+5" is a valid two-byte field).
_TIME_RE = re.compile(
    rb'"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})'
    rb'(?:\.([0-9]+))?(?:Z|([+-])([0-9]{2}|[+-][0-9]):([0-9]{2}|[+-][0-9]))"'
)


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One entry of an image config's ``history``."""

    created: str  # Go RFC3339Nano: fraction without trailing zeros, offset kept, UTC as Z
    author: str = ""
    created_by: str = ""
    comment: str = ""

    def to_json(self) -> bytes:
        """The entry as Go marshals ``image.History``: empty optional fields left out.

        Raises:
            ValueError: ``created`` has a year Go refuses to marshal (outside 0000-9999).
        """
        if not _marshallable(self.created):
            raise FormatError(f"created time {self.created} is outside the years 0000-9999")
        parts = [b'"created":"' + self.created.encode() + b'"']
        for name, text in (
            ("author", self.author),
            ("created_by", self.created_by),
            ("comment", self.comment),
        ):
            if text:
                parts.append(b'"' + name.encode() + b'":' + encode_string(text))
        return b"{" + b",".join(parts) + b"}"


@dataclass(frozen=True, slots=True)
class LegacyImage:
    """A legacy image's JSON with what the migration needs from it."""

    raw: bytes  # the graph/<id>/json bytes as read
    parent: str  # `parent` key, else hex part of `parent_id`, else "" (parent file not applied)
    history: HistoryItem


def parse_legacy_image(raw: bytes) -> LegacyImage:
    """Decode a legacy image's JSON the way Docker 1.10 did, failing where it failed.

    Raises:
        ValueError: ``raw`` is not JSON, not an object (``null`` is accepted, as Go does), or a
            field Docker decodes has the wrong type; the message is one line naming the field.
    """
    image = _decode_v1image(raw)
    parent = image.strings["parent"]
    if not parent and image.strings["parent_id"]:
        parent = _digest_hex(image.strings["parent_id"])
    cmd = image.container_config.strslices["Cmd"] or []
    history = HistoryItem(
        created=image.created,
        author=image.strings["author"],
        created_by=" ".join(cmd),
        comment=image.strings["comment"],
    )
    return LegacyImage(raw, parent, history)


def make_config(
    image: LegacyImage, diff_ids: Sequence[DiffID], history: Sequence[HistoryItem]
) -> bytes:
    """The Docker 1.10 image config for ``image`` with the given layers and history.

    Args:
        image: the legacy image, from :func:`parse_legacy_image`.
        diff_ids: the diff IDs of the whole layer stack, base first.
        history: the history of the whole stack, base first, this image's item last.

    Raises:
        ValueError: the JSON does not decode (see :func:`parse_legacy_image`), or it must be
            re-marshalled and its ``created`` year is outside 0000-9999 (Go refuses that).
    """
    decoded = _decode_v1image(image.raw)
    if _version_less(decoded.strings["docker_version"], _NO_FALLBACK_VERSION):
        fields = _v1image_fields(decoded)
    else:
        fields = gojson.split_object(image.raw)

    for key in _DROPPED_KEYS:
        fields.pop(key, None)
    fields["rootfs"] = _rootfs_json(diff_ids)
    fields["history"] = _history_json(history)
    return gojson.marshal_object(fields)


def parse_config(raw_config: bytes) -> tuple[list[DiffID], list[HistoryItem]]:
    """The diff IDs and history of a stored image config, to build a child's on top.

    Raises:
        ValueError: the config lacks a usable ``rootfs`` or its ``history`` is malformed.
    """
    fields = gojson.split_object(raw_config)
    if "rootfs" not in fields:
        raise FormatError("config has no rootfs")
    diff_ids = _parse_rootfs(gojson.parse(fields["rootfs"]))
    history_raw = fields.get("history", b"null")
    history = _parse_history(gojson.parse(history_raw))
    return diff_ids, history


# -- Go's decoding of V1Image ---------------------------------------------------------------


class _Kind(enum.Enum):
    STRING = "a string"
    BOOL = "a boolean"
    STRING_MAP = "an object of strings"
    SET_MAP = "an object"
    STRING_LIST = "an array of strings"
    STR_SLICE = "a string or an array of strings"


# engine-api v0.2.3 container.Config: (name, kind, omitempty), in struct order (spec 3.5 step 2).
_CONFIG_FIELDS: tuple[tuple[str, _Kind, bool], ...] = (
    ("Hostname", _Kind.STRING, False),
    ("Domainname", _Kind.STRING, False),
    ("User", _Kind.STRING, False),
    ("AttachStdin", _Kind.BOOL, False),
    ("AttachStdout", _Kind.BOOL, False),
    ("AttachStderr", _Kind.BOOL, False),
    ("ExposedPorts", _Kind.SET_MAP, True),
    ("PublishService", _Kind.STRING, True),
    ("Tty", _Kind.BOOL, False),
    ("OpenStdin", _Kind.BOOL, False),
    ("StdinOnce", _Kind.BOOL, False),
    ("Env", _Kind.STRING_LIST, False),
    ("Cmd", _Kind.STR_SLICE, False),
    ("ArgsEscaped", _Kind.BOOL, True),
    ("Image", _Kind.STRING, False),
    ("Volumes", _Kind.SET_MAP, False),
    ("WorkingDir", _Kind.STRING, False),
    ("Entrypoint", _Kind.STR_SLICE, False),
    ("NetworkDisabled", _Kind.BOOL, True),
    ("MacAddress", _Kind.STRING, True),
    ("OnBuild", _Kind.STRING_LIST, False),
    ("Labels", _Kind.STRING_MAP, False),
    ("StopSignal", _Kind.STRING, True),
)


def fold_key(key: str) -> str:
    """``key`` as Go compares it with an ASCII field name.

    ASCII letters fold to lower case, and the long s (U+017F) and the Kelvin sign (U+212A) fold
    to ``s`` and ``k``, as in Go's ``encoding/json`` field matching.
    """
    return "".join(_FOLDED.get(char, char) for char in key)


_FOLDED = {chr(c): chr(c).lower() for c in range(ord("A"), ord("Z") + 1)}
_FOLDED |= {"\u017f": "s", "\u212a": "k"}
_CONFIG_BY_KEY = {name.lower(): (name, kind) for name, kind, _ in _CONFIG_FIELDS}


@dataclass(slots=True)
class _GoSlice:
    """A Go ``[]string``: decoding into it again reuses its storage beyond the length."""

    storage: list[str]
    length: int

    def items(self) -> list[str]:
        return self.storage[: self.length]


@dataclass(slots=True)
class _Config:
    """The decoded state of a ``container.Config``, one table per field kind."""

    strings: dict[str, str] = field(default_factory=dict)
    bools: dict[str, bool] = field(default_factory=dict)
    maps: dict[str, dict[str, str] | None] = field(default_factory=dict)
    lists: dict[str, _GoSlice | None] = field(default_factory=dict)
    strslices: dict[str, list[str] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind, _ in _CONFIG_FIELDS:
            if kind is _Kind.STRING:
                self.strings[name] = ""
            elif kind is _Kind.BOOL:
                self.bools[name] = False
            elif kind in (_Kind.STRING_MAP, _Kind.SET_MAP):
                self.maps[name] = None
            elif kind is _Kind.STRING_LIST:
                self.lists[name] = None
            else:
                self.strslices[name] = None


_IMAGE_STRINGS = (
    "id",
    "parent",
    "comment",
    "container",
    "docker_version",
    "author",
    "architecture",
    "os",
    "parent_id",  # not a V1Image field: the parent lookup reads it (spec 3.2)
)


@dataclass(slots=True)
class _V1Image:
    strings: dict[str, str] = field(default_factory=lambda: dict.fromkeys(_IMAGE_STRINGS, ""))
    created: str = ZERO_TIME
    container_config: _Config = field(default_factory=_Config)
    config: _Config | None = None
    size: int = 0


def _decode_v1image(raw: bytes) -> _V1Image:
    top = gojson.parse(raw)
    image = _V1Image()
    if top.kind == "null":
        return image  # Go leaves the struct as it is, without error
    if top.kind != "object":
        raise FormatError(f"image JSON is {_article(top.kind)}, not an object")
    for key, value in top.members():
        _decode_image_member(image, fold_key(key), value)
    return image


def _decode_image_member(image: _V1Image, name: str, value: Value) -> None:
    if name in image.strings:
        image.strings[name] = _decode_string(image.strings[name], value, name)
    elif name == "created":
        image.created = _parse_go_time(value)
    elif name == "container_config":
        if value.kind != "null":
            _decode_config(image.container_config, value, name)
    elif name == "config":
        if value.kind == "null":
            image.config = None
        else:
            image.config = image.config or _Config()
            _decode_config(image.config, value, name)
    elif name == "size":
        image.size = _decode_int64(image.size, value)


def _decode_config(config: _Config, value: Value, where: str) -> None:
    if value.kind != "object":
        raise _type_error(where, "an object", value)
    for key, member in value.members():
        spec = _CONFIG_BY_KEY.get(fold_key(key))
        if spec is None:
            continue
        name, kind = spec
        path = f"{where}.{name}"
        if kind is _Kind.STRING:
            config.strings[name] = _decode_string(config.strings[name], member, path)
        elif kind is _Kind.BOOL:
            config.bools[name] = _decode_bool(config.bools[name], member, path)
        elif kind in (_Kind.STRING_MAP, _Kind.SET_MAP):
            config.maps[name] = _decode_map(config.maps[name], member, path, kind)
        elif kind is _Kind.STRING_LIST:
            config.lists[name] = _decode_list(config.lists[name], member, path)
        else:
            config.strslices[name] = _decode_strslice(member, path)


def _decode_string(old: str, value: Value, path: str) -> str:
    if value.kind == "null":
        return old
    if value.kind != "string":
        raise _type_error(path, _Kind.STRING.value, value)
    return value.text()


def _decode_bool(old: bool, value: Value, path: str) -> bool:
    if value.kind == "null":
        return old
    if value.kind != "bool":
        raise _type_error(path, _Kind.BOOL.value, value)
    return value.raw == b"true"


def _decode_int64(old: int, value: Value) -> int:
    if value.kind == "null":
        return old
    if value.kind != "number" or _INT64_RE.fullmatch(value.raw) is None:
        raise _type_error("Size", "an integer", value)
    number = int(value.raw)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise FormatError(f"Size: {value.raw.decode()} does not fit in 64 bits")
    return number


def _decode_map(
    old: dict[str, str] | None, value: Value, path: str, kind: _Kind
) -> dict[str, str] | None:
    """A Go map: ``null`` makes it nil, an object adds to the existing map."""
    if value.kind == "null":
        return None
    if value.kind != "object":
        raise _type_error(path, kind.value, value)
    result = old if old is not None else {}
    for key, member in value.members():
        if kind is _Kind.SET_MAP:
            # Values are struct{}: any object (its members ignored) or null.
            if member.kind not in ("object", "null"):
                raise _type_error(f"{path}[{key!r}]", "an object", member)
            result[key] = ""
        else:
            result[key] = _decode_string("", member, f"{path}[{key!r}]")
    return result


def _decode_list(old: _GoSlice | None, value: Value, path: str) -> _GoSlice | None:
    """A Go ``[]string``, reusing the old storage the way Go 1.5 grows and truncates slices."""
    if value.kind == "null":
        return None
    if value.kind != "array":
        raise _type_error(path, _Kind.STRING_LIST.value, value)
    storage, length = (old.storage, old.length) if old is not None else ([], 0)
    count = 0
    for element in value.elements():
        if count >= len(storage):
            capacity = max(4, len(storage) + len(storage) // 2)
            storage = storage[:length] + [""] * (capacity - length)
        length = max(length, count + 1)
        storage[count] = _decode_string(storage[count], element, f"{path}[{count}]")
        count += 1
    if count == 0:
        return _GoSlice([], 0)
    return _GoSlice(storage, min(length, count))


def _decode_strslice(value: Value, path: str) -> list[str] | None:
    """engine-api's StrSlice: ``null`` is nil, a string is one element, else an array of strings."""
    if value.kind == "null":
        return None
    if value.kind == "string":
        return [value.text()]
    if value.kind == "array":
        elements = list(value.elements())
        if all(element.kind in ("string", "null") for element in elements):
            return [element.text() if element.kind == "string" else "" for element in elements]
    raise _type_error(path, _Kind.STR_SLICE.value, value)


def _type_error(path: str, expected: str, value: Value) -> FormatError:
    return FormatError(f"{path}: expected {expected}, found {_article(value.kind)}")


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _digest_hex(digest: str) -> str:
    """The part after the first colon, as distribution's ``Digest.Hex`` returns it."""
    if ":" not in digest:
        # NOTE: Docker 1.10 panicked here and the daemon died; failing the image is our choice.
        raise FormatError(f"parent_id {digest!r} has no algorithm prefix")
    return digest.split(":", 1)[1]


def _version_less(version: str, minimum: str) -> bool:
    """Docker's ``pkg/version`` comparison: dot-separated fields compared as Go ``Atoi`` ints."""
    ours, theirs = version.split("."), minimum.split(".")
    for index in range(max(len(ours), len(theirs))):
        a = _go_atoi(ours[index]) if index < len(ours) else 0
        b = _go_atoi(theirs[index]) if index < len(theirs) else 0
        if a != b:
            return a < b
    return False


def _go_atoi(text: str) -> int:
    """Go's ``strconv.Atoi`` with the error ignored: 0 unless a whole integer, clamped to int64."""
    if _GO_INT_RE.fullmatch(text) is None:
        return 0
    return max(_INT64_MIN, min(_INT64_MAX, int(text)))


# -- Go 1.5 time ------------------------------------------------------------------------------


def _parse_go_time(value: Value) -> str:
    """``time.Time.UnmarshalJSON`` of Go 1.5 on the raw token, rendered as RFC3339Nano."""
    match = _TIME_RE.fullmatch(value.raw)
    if match is None:
        raise FormatError(f"created: {_shorten(value.raw)} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, sign, zone_hours, zone_minutes = match.group(7, 8, 9, 10)
    if not (1 <= month <= 12 and day <= 31 and hour <= 23 and minute <= 59 and second <= 59):
        raise FormatError(f"created: {_shorten(value.raw)} has a field out of range")
    nanos = _nanoseconds(fraction)
    if nanos is None:
        raise FormatError(f"created: {_shorten(value.raw)} has a fractional second out of range")
    offset = 0
    if sign is not None:
        offset = int(zone_hours) * 60 + int(zone_minutes)
        offset = -offset if sign == b"-" else offset
    year, month, day = _normalise_day(year, month, day)
    return _format_rfc3339nano(year, month, day, (hour, minute, second, nanos), offset)


def _nanoseconds(fraction: bytes | None) -> int | None:
    # Go 1.5 scales up to nine digits; longer fractions are taken as a count of nanoseconds.
    if fraction is None:
        return 0
    if len(fraction.lstrip(b"0")) > 9:
        return None
    nanos = int(fraction)
    return nanos * 10 ** (9 - len(fraction)) if len(fraction) < 9 else nanos


def _normalise_day(year: int, month: int, day: int) -> tuple[int, int, int]:
    """Go 1.5's Parse accepts days 0-31 in any month and ``time.Date`` rolls them over."""
    if day == 0:
        month -= 1
        if month == 0:
            year, month = year - 1, 12
        return year, month, _days_in(month, year)
    if day > _days_in(month, year):
        return year, month + 1, day - _days_in(month, year)
    return year, month, day


def _days_in(month: int, year: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _format_rfc3339nano(
    year: int, month: int, day: int, clock: tuple[int, int, int, int], offset: int
) -> str:
    hour, minute, second, nanos = clock
    year_text = f"{year:04d}" if year >= 0 else f"-{-year:04d}"
    text = f"{year_text}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    if offset == 0:
        return text + "Z"
    sign = "-" if offset < 0 else "+"
    return text + f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"


def _marshallable(created: str) -> bool:
    # Go's Time.MarshalJSON refuses years outside 0-9999; only year -1 can be reached (0000-01-00).
    return not created.startswith("-")


def _shorten(raw: bytes) -> str:
    return repr(raw[:40].decode("utf-8", "replace")) + ("..." if len(raw) > 40 else "")


# -- Go's marshalling of V1Image (the < 1.8.3 fallback) -----------------------------------------


def _v1image_fields(image: _V1Image) -> dict[str, bytes]:
    """The top-level members ``json.Marshal(V1Image)`` writes, as raw values."""
    if not _marshallable(image.created):
        raise FormatError(f"created time {image.created} is outside the years 0000-9999")
    strings = image.strings
    fields: dict[str, bytes] = {}
    for name in ("id", "parent", "comment", "container", "docker_version", "author"):
        if strings[name]:
            fields[name] = encode_string(strings[name])
    fields["created"] = b'"' + image.created.encode() + b'"'
    fields["container_config"] = _config_json(image.container_config)
    if image.config is not None:
        fields["config"] = _config_json(image.config)
    for name in ("architecture", "os"):
        if strings[name]:
            fields[name] = encode_string(strings[name])
    if image.size:
        fields["Size"] = str(image.size).encode()
    return fields


def _config_json(config: _Config) -> bytes:
    parts: list[bytes] = []
    for name, kind, omitempty in _CONFIG_FIELDS:
        value = _config_field_json(config, name, kind, omitempty)
        if value is not None:
            parts.append(b'"' + name.encode() + b'":' + value)
    return b"{" + b",".join(parts) + b"}"


def _config_field_json(config: _Config, name: str, kind: _Kind, omitempty: bool) -> bytes | None:
    """One field of ``container.Config`` as Go marshals it; None when omitted."""
    if kind is _Kind.STRING:
        text = config.strings[name]
        return None if omitempty and not text else encode_string(text)
    if kind is _Kind.BOOL:
        flag = config.bools[name]
        return None if omitempty and not flag else (b"true" if flag else b"false")
    if kind in (_Kind.STRING_MAP, _Kind.SET_MAP):
        mapping = config.maps[name]
        if omitempty and not mapping:
            return None
        return b"null" if mapping is None else _map_json(mapping, as_set=kind is _Kind.SET_MAP)
    if kind is _Kind.STRING_LIST:
        slice_ = config.lists[name]
        return b"null" if slice_ is None else _array_json(slice_.items())
    parts = config.strslices[name]
    return b"null" if parts is None else _array_json(parts)


def _map_json(mapping: dict[str, str], *, as_set: bool) -> bytes:
    keys = sorted(mapping, key=lambda key: key.encode())
    members = (
        encode_string(key) + b":" + (b"{}" if as_set else encode_string(mapping[key]))
        for key in keys
    )
    return b"{" + b",".join(members) + b"}"


def _array_json(items: Iterable[str]) -> bytes:
    return b"[" + b",".join(encode_string(item) for item in items) + b"]"


def _rootfs_json(diff_ids: Sequence[DiffID]) -> bytes:
    return b'{"type":"layers","diff_ids":' + _array_json(str(d) for d in diff_ids) + b"}"


def _history_json(history: Sequence[HistoryItem]) -> bytes:
    # NOTE: Docker marshalled history apart and wrote `null` when that failed (spec 3.5 step 5).
    if not all(_marshallable(item.created) for item in history):
        return b"null"
    return b"[" + b",".join(item.to_json() for item in history) + b"]"


# -- reading back a stored config ---------------------------------------------------------------


def _parse_rootfs(rootfs: Value) -> list[DiffID]:
    if rootfs.kind != "object":
        raise _type_error("rootfs", "an object", rootfs)
    members = dict(rootfs.members())
    diff_ids = members.get("diff_ids")
    if diff_ids is None or diff_ids.kind == "null":
        return []
    if diff_ids.kind != "array":
        raise _type_error("rootfs.diff_ids", "an array", diff_ids)
    result: list[DiffID] = []
    for element in diff_ids.elements():
        if element.kind != "string":
            raise _type_error("rootfs.diff_ids", "strings", element)
        try:
            result.append(DiffID.parse(element.text()))
        except DigestError as exc:
            raise FormatError(f"rootfs.diff_ids: {exc}") from None
    return result


def _parse_history(history: Value) -> list[HistoryItem]:
    if history.kind == "null":
        return []
    if history.kind != "array":
        raise _type_error("history", "an array", history)
    items: list[HistoryItem] = []
    for element in history.elements():
        if element.kind != "object":
            raise _type_error("history", "objects", element)
        members = dict(element.members())
        created = members.get("created")
        texts = {
            name: _decode_string("", members[name], f"history.{name}") if name in members else ""
            for name in ("author", "created_by", "comment")
        }
        items.append(
            HistoryItem(
                created=_parse_go_time(created) if created is not None else ZERO_TIME,
                author=texts["author"],
                created_by=texts["created_by"],
                comment=texts["comment"],
            )
        )
    return items
