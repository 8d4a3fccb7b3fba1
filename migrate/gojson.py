"""JSON exactly as Docker 1.10 read and wrote it (Go 1.5 ``encoding/json``).

Image IDs are hashes of JSON bytes, so reading and writing must follow Go's rules to the byte
(migration spec 3.5 step 6, section 6 item 13):

- Syntax is strict RFC 7159; bytes that are not UTF-8 are allowed inside strings.
- Decoding a string turns each byte that is not part of valid UTF-8, and each lone surrogate
  escape, into U+FFFD.
- Encoding a string escapes ``"``, ``\\``, ``\\n``, ``\\r`` and ``\\t`` with a backslash,
  every other control character and ``<``, ``>``, ``&``, U+2028, U+2029 as ``\\u00XX`` or
  ``\\u202X``; anything else stays literal.
- A raw value (Go's ``json.RawMessage``) is written compacted and HTML-escaped, nothing else: its
  escapes, number spellings and key order survive.

The scanner is iterative, so nesting depth is limited by memory alone, never by Python's stack.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from migrate.errors import FormatError

_STRING = rb'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_TOKEN_RE = re.compile(
    rb"[ \t\n\r]*(?:(" + _STRING + rb")|(" + _NUMBER + rb")|(true|false|null)|([{}\[\]:,]))"
)
_STRING_RE = re.compile(_STRING)
_NUMBER_RE = re.compile(_NUMBER)
_WHITESPACE_RE = re.compile(rb"[ \t\n\r]*")
_BRACKET_RE = re.compile(_STRING + rb"|[{}\[\]]")
_ESCAPE_RE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|(.))", re.DOTALL)
_U_ESCAPE_RE = re.compile(rb"\\u([0-9a-fA-F]{4})")
_SHORT_ESCAPES = {
    b'"': '"',
    b"\\": "\\",
    b"/": "/",
    b"b": "\b",
    b"f": "\f",
    b"n": "\n",
    b"r": "\r",
    b"t": "\t",
}
_NEEDS_ESCAPE_RE = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')
_ESCAPED = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Token groups of _TOKEN_RE.
_STR, _PUNCT = 1, 4

# Scanner states: what the grammar allows next.
_VALUE, _VALUE_OR_CLOSE, _KEY_OR_CLOSE, _KEY, _COLON, _COMMA_OR_CLOSE, _DONE = range(7)

# Matching brackets are remembered down to this nesting level; deeper ones are found on demand.
_RECORDED_DEPTH = 8

_REPLACE_BYTE = "graph-migrate.go-replace-byte"


def _replace_one_byte(error: UnicodeError) -> tuple[str, int]:
    """Replace one undecodable byte by U+FFFD and resume at the next byte, as Go's decoder does."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "\ufffd", error.start + 1


codecs.register_error(_REPLACE_BYTE, _replace_one_byte)


@dataclass(frozen=True, slots=True)
class _Document:
    raw: bytes
    closing: dict[int, int]  # offset of a shallow '{' or '[' -> offset just past its match


@dataclass(frozen=True, slots=True)
class Value:
    """One value of a validated JSON document: where its exact bytes are."""

    document: _Document
    start: int
    end: int

    @property
    def raw(self) -> bytes:
        """The value's bytes exactly as written (inner whitespace included)."""
        return self.document.raw[self.start : self.end]

    @property
    def kind(self) -> str:
        """One of ``object``, ``array``, ``string``, ``number``, ``bool`` and ``null``."""
        return _KIND_BY_FIRST_BYTE.get(self.document.raw[self.start], "number")

    def text(self) -> str:
        """The decoded string; only for ``kind == "string"``."""
        return decode_string(self.raw)

    def members(self) -> Iterator[tuple[str, Value]]:
        """The decoded key and value of each member of an object, in order, duplicates kept."""
        raw = self.document.raw
        pos = _skip_whitespace(raw, self.start + 1)
        if raw[pos] == ord("}"):
            return
        while True:
            key = _STRING_RE.match(raw, pos)
            assert key is not None  # the document was validated
            start = _skip_whitespace(raw, _skip_whitespace(raw, key.end()) + 1)
            end = _value_end(self.document, start)
            yield decode_string(key.group()), Value(self.document, start, end)
            pos = _skip_whitespace(raw, end)
            if raw[pos] == ord("}"):
                return
            pos = _skip_whitespace(raw, pos + 1)

    def elements(self) -> Iterator[Value]:
        """Each element of an array, in order."""
        raw = self.document.raw
        pos = _skip_whitespace(raw, self.start + 1)
        if raw[pos] == ord("]"):
            return
        while True:
            end = _value_end(self.document, pos)
            yield Value(self.document, pos, end)
            pos = _skip_whitespace(raw, end)
            if raw[pos] == ord("]"):
                return
            pos = _skip_whitespace(raw, pos + 1)


_KIND_BY_FIRST_BYTE = {
    ord("{"): "object",
    ord("["): "array",
    ord('"'): "string",
    ord("t"): "bool",
    ord("f"): "bool",
    ord("n"): "null",
}


def parse(raw: bytes) -> Value:
    """The single JSON value that ``raw`` holds, as ``json.Unmarshal`` accepts it.

    Raises:
        ValueError: ``raw`` is not exactly one valid JSON value (surrounding whitespace aside).
    """
    return _scan(raw, first_only=False, pieces=None)


def parse_first(raw: bytes) -> Value:
    """The first JSON value of ``raw``, ignoring what follows, as a ``json.Decoder`` reads it.

    Raises:
        ValueError: ``raw`` does not start with a complete, valid JSON value.
    """
    return _scan(raw, first_only=True, pieces=None)


def decode_string(token: bytes) -> str:
    """The text of a JSON string token (quotes included), decoded as Go 1.5 does."""
    body = token[1:-1]
    if b"\\" not in body:
        return body.decode("utf-8", _REPLACE_BYTE)
    out: list[str] = []
    pos = 0
    while (escape := _ESCAPE_RE.search(body, pos)) is not None:
        out.append(body[pos : escape.start()].decode("utf-8", _REPLACE_BYTE))
        pos = escape.end()
        if escape.group(2) is not None:
            out.append(_SHORT_ESCAPES[escape.group(2)])
            continue
        code = int(escape.group(1), 16)
        if 0xD800 <= code < 0xE000:
            # A high surrogate joins a following low one; anything else becomes U+FFFD.
            low = _U_ESCAPE_RE.match(body, pos)
            low_code = int(low.group(1), 16) if low is not None else 0
            if code < 0xDC00 and low is not None and 0xDC00 <= low_code < 0xE000:
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low_code - 0xDC00)))
                pos = low.end()
                continue
            code = 0xFFFD
        out.append(chr(code))
    out.append(body[pos:].decode("utf-8", _REPLACE_BYTE))
    return "".join(out)


def encode_string(text: str) -> bytes:
    """``text`` as a JSON string the way Go 1.5 writes it, HTML escapes included.

    A lone surrogate in ``text`` stands for a byte that was not UTF-8 and becomes ``\\ufffd``.
    """
    return b'"' + _NEEDS_ESCAPE_RE.sub(_escape_char, text).encode("utf-8") + b'"'


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPED:
        return _ESCAPED[char]
    if "\ud800" <= char <= "\udfff":
        return "\\ufffd"
    return f"\\u{ord(char):04x}"


def compact(raw: bytes) -> bytes:
    """``raw`` without insignificant whitespace and with HTML characters escaped.

    This is what Go writes for a ``json.RawMessage``: nothing else in the value changes.

    Raises:
        ValueError: ``raw`` is not exactly one valid JSON value.
    """
    pieces: list[bytes] = []
    _scan(raw, first_only=False, pieces=pieces)
    return _html_escape(b"".join(pieces))


def _html_escape(data: bytes) -> bytes:
    # Outside strings valid JSON has none of these bytes, so replacing everywhere is exact.
    return (
        data.replace(b"<", b"\\u003c")
        .replace(b">", b"\\u003e")
        .replace(b"&", b"\\u0026")
        .replace(b"\xe2\x80\xa8", b"\\u2028")
        .replace(b"\xe2\x80\xa9", b"\\u2029")
    )


def split_object(raw: bytes) -> dict[str, bytes]:
    """Each top-level key of the JSON object ``raw`` with its value's exact bytes.

    Keys are decoded as Go decodes them; for a key given twice the last value wins.

    Raises:
        ValueError: ``raw`` is not valid JSON or not an object.
    """
    value = parse(raw)
    if value.kind != "object":
        raise FormatError(f"expected a JSON object, found {value.kind}")
    return {key: member.raw for key, member in value.members()}


def marshal_object(fields: Mapping[str, bytes]) -> bytes:
    """The object Go writes for a ``map[string]*json.RawMessage`` holding ``fields``.

    Keys are sorted by their UTF-8 bytes and encoded as Go strings; each value is compacted and
    HTML-escaped.

    Raises:
        ValueError: a value is not valid JSON.
    """
    keys = sorted(fields, key=lambda key: key.encode("utf-8", "surrogatepass"))
    members = (encode_string(key) + b":" + compact(fields[key]) for key in keys)
    return b"{" + b",".join(members) + b"}"


def _skip_whitespace(raw: bytes, pos: int) -> int:
    match = _WHITESPACE_RE.match(raw, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _value_end(document: _Document, pos: int) -> int:
    """Offset just past the validated value starting at ``pos``."""
    raw = document.raw
    first = raw[pos]
    if first in (ord("{"), ord("[")):
        end = document.closing.get(pos)
        return end if end is not None else _matching_bracket_end(raw, pos)
    if first == ord('"'):
        match = _STRING_RE.match(raw, pos)
    elif first in (ord("t"), ord("n")):
        return pos + 4
    elif first == ord("f"):
        return pos + 5
    else:
        match = _NUMBER_RE.match(raw, pos)
    assert match is not None  # the document was validated
    return match.end()


def _matching_bracket_end(raw: bytes, pos: int) -> int:
    depth = 0
    for match in _BRACKET_RE.finditer(raw, pos):
        token = match.group()
        if token in (b"{", b"["):
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return match.end()
    raise AssertionError("unbalanced brackets in a validated document")


def _scan(raw: bytes, *, first_only: bool, pieces: list[bytes] | None) -> Value:
    """Validate ``raw`` token by token with an explicit stack; the top-level value."""
    scanner = _Scanner(raw)
    top_start = -1
    pos = 0
    while scanner.state != _DONE or not first_only:
        token = _TOKEN_RE.match(raw, pos)
        if token is None:
            break
        group = token.lastindex
        assert group is not None
        start, pos = token.start(group), token.end()
        if pieces is not None:
            pieces.append(raw[start:pos])
        if top_start < 0:
            top_start = start
        scanner.step(group, start, pos)

    rest = _skip_whitespace(raw, pos)
    if scanner.state != _DONE and rest == len(raw):
        raise FormatError("invalid JSON: unexpected end of input")
    if scanner.state != _DONE or (not first_only and rest != len(raw)):
        raise FormatError(
            f"invalid JSON: unexpected {_shown(raw[rest : rest + 1])} at offset {rest}"
        )
    document = _Document(raw, scanner.closing)
    return Value(document, top_start, _value_end(document, top_start))


def _shown(token: bytes) -> str:
    """``token`` quoted for a one-line message, as text rather than as Python bytes."""
    return repr(token.decode("utf-8", "backslashreplace"))


class _Scanner:
    """The grammar of JSON as a state machine over tokens, nesting kept in a list."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.state = _VALUE
        self.stack: list[int] = []  # offsets of the brackets still open
        self.closing: dict[int, int] = {}

    def step(self, group: int, start: int, end: int) -> None:
        """Advance over the token ``raw[start:end]``; ValueError when the grammar forbids it."""
        char = chr(self.raw[start])
        state = self.state
        if state in (_VALUE, _VALUE_OR_CLOSE) and group != _PUNCT:
            self._after_value()
        elif state in (_VALUE, _VALUE_OR_CLOSE) and char in "{[":
            self.stack.append(start)
            self.state = _KEY_OR_CLOSE if char == "{" else _VALUE_OR_CLOSE
        elif state in (_KEY_OR_CLOSE, _KEY) and group == _STR:
            self.state = _COLON
        elif state == _COLON and char == ":":
            self.state = _VALUE
        elif state == _COMMA_OR_CLOSE and char == ",":
            self.state = _KEY if self._in_object() else _VALUE
        elif (
            state in (_VALUE_OR_CLOSE, _COMMA_OR_CLOSE) and char == "]" and not self._in_object()
        ) or (state in (_KEY_OR_CLOSE, _COMMA_OR_CLOSE) and char == "}" and self._in_object()):
            self._close(end)
        else:
            token = self.raw[start:end][:16]
            raise FormatError(f"invalid JSON: unexpected {_shown(token)} at offset {start}")

    def _in_object(self) -> bool:
        return self.raw[self.stack[-1]] == ord("{")

    def _close(self, end: int) -> None:
        if len(self.stack) <= _RECORDED_DEPTH:
            self.closing[self.stack[-1]] = end
        self.stack.pop()
        self._after_value()

    def _after_value(self) -> None:
        self.state = _COMMA_OR_CLOSE if self.stack else _DONE
