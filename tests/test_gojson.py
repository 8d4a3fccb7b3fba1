"""Go 1.5 JSON rules (spec 3.5 step 6, section 6 item 13), and hostile input for every parser."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate import gojson
from migrate.containers import container_image
from migrate.gojson import compact, decode_string, encode_string, marshal_object, split_object
from migrate.imageconfig import parse_legacy_image
from migrate.references import migrate_tags
from tests.test_containers import CONTAINER
from tests.test_imageconfig import A0, A1, A3, IMAGE_A_19, IMAGE_B_182
from tests.test_references import LEGACY_TAGS, MAPPING


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        pytest.param("plain", b'"plain"', id="plain"),
        pytest.param('q"b\\', b'"q\\"b\\\\"', id="quote-backslash"),
        pytest.param("\n\r\t", b'"\\n\\r\\t"', id="short-escapes"),
        pytest.param("\b\f\x00\x1f", b'"\\u0008\\u000c\\u0000\\u001f"', id="other-controls"),
        pytest.param("<a&b>", b'"\\u003ca\\u0026b\\u003e"', id="html"),
        pytest.param("\u2028\u2029", b'"\\u2028\\u2029"', id="line-separators"),
        pytest.param("/\x7f", b'"/\x7f"', id="slash-and-del-literal"),
        pytest.param("caf\u00e9 \U0001f600", '"caf\u00e9 \U0001f600"'.encode(), id="non-ascii"),
        pytest.param("\ufffd", '"\ufffd"'.encode(), id="replacement-char-literal"),
        pytest.param("a\udcffb", b'"a\\ufffdb"', id="lone-surrogate"),
    ],
)
def test_encode_string(text: str, encoded: bytes) -> None:
    assert encode_string(text) == encoded


@pytest.mark.parametrize(
    ("token", "text"),
    [
        pytest.param(b'"\\"\\\\\\/\\b\\f\\n\\r\\t"', '"\\/\b\f\n\r\t', id="short-escapes"),
        pytest.param(b'"\\u00e9\\u00E9"', "\u00e9\u00e9", id="unicode-escapes"),
        pytest.param(b'"\\ud83d\\ude00"', "\U0001f600", id="surrogate-pair"),
        pytest.param(b'"\\ud83dx"', "\ufffdx", id="lone-high"),
        pytest.param(b'"\\ude00\\ud83d"', "\ufffd\ufffd", id="reversed-pair"),
        pytest.param(b'"\\ud800\\ud800\\udc00"', "\ufffd\U00010000", id="high-then-pair"),
        pytest.param(b'"a\xffb"', "a\ufffdb", id="invalid-byte"),
        pytest.param(b'"\xe2\x82A"', "\ufffd\ufffdA", id="truncated-sequence-per-byte"),
        pytest.param(b'"\xed\xa0\x80"', "\ufffd\ufffd\ufffd", id="utf8-surrogate"),
        pytest.param(b'"\xc0\x80"', "\ufffd\ufffd", id="overlong"),
        pytest.param(b'"\xe2\\n"', "\ufffd\n", id="invalid-before-escape"),
    ],
)
def test_decode_string(token: bytes, text: str) -> None:
    assert decode_string(token) == text


@pytest.mark.parametrize(
    ("raw", "compacted"),
    [
        pytest.param(b' { "a" : [ 1 , 2.50 , 1e3 ] } \n', b'{"a":[1,2.50,1e3]}', id="whitespace"),
        pytest.param(b'"\\u00e9\\/x"', b'"\\u00e9\\/x"', id="escapes-kept"),
        pytest.param(b'"<&>"', b'"\\u003c\\u0026\\u003e"', id="html-escaped"),
        pytest.param(b'"\xe2\x80\xa8\xe2\x80\xa9"', b'"\\u2028\\u2029"', id="line-separators"),
        pytest.param(b'"\xff\xc3\xa9"', b'"\xff\xc3\xa9"', id="bytes-kept"),
        pytest.param(b'{"b":1,"a":2,"b":3}', b'{"b":1,"a":2,"b":3}', id="order-and-dups-kept"),
        pytest.param(b"-0", b"-0", id="negative-zero"),
    ],
)
def test_compact(raw: bytes, compacted: bytes) -> None:
    assert compact(raw) == compacted


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{} {}", id="two-values"),
        pytest.param(b"[1,]", id="trailing-comma"),
        pytest.param(b"01", id="leading-zero"),
        pytest.param(b"1.", id="bare-point"),
        pytest.param(b"+1", id="plus"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"'a'", id="single-quotes"),
        pytest.param(b'"\t"', id="raw-tab-in-string"),
        pytest.param(b'"\\x41"', id="bad-escape"),
        pytest.param(b'"\\u12"', id="short-unicode-escape"),
        pytest.param(b"{1:2}", id="number-key"),
        pytest.param(b'{"a"}', id="missing-colon"),
        pytest.param(b"[}", id="mismatched"),
        pytest.param(b"\xef\xbb\xbf{}", id="byte-order-mark"),
        pytest.param(b"tru", id="truncated-literal"),
        pytest.param(b"\x0c1", id="form-feed-is-not-space"),
    ],
)
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        compact(raw)


def test_split_object_decodes_keys_and_keeps_the_last_duplicate() -> None:
    assert split_object(b'{"a" : [1, 2] , "\\u0061":{"x": "y"}, "\xff":null}') == {
        "a": b'{"x": "y"}',
        "\ufffd": b"null",
    }


@pytest.mark.parametrize("raw", [b"[]", b"null", b'"{}"', b"{"])
def test_split_object_needs_an_object(raw: bytes) -> None:
    with pytest.raises(ValueError):
        split_object(raw)


def test_marshal_object_sorts_keys_by_utf8_bytes() -> None:
    fields = {"\u00e9": b"1", "z": b"2", "B": b" [ 3 ] ", "a<": b'"<"', "n": b"null"}
    assert marshal_object(fields) == (b'{"B":[3],"a\\u003c":"\\u003c","n":null,"z":2,"\xc3\xa9":1}')


def test_marshal_object_rejects_invalid_values() -> None:
    with pytest.raises(ValueError):
        marshal_object({"a": b"{"})


def test_nesting_depth_is_not_limited_by_the_stack() -> None:
    depth = 200_000
    deep = b"[" * depth + b"]" * depth
    assert compact(deep) == deep
    assert split_object(b'{"k":' + deep + b', "z": 1}') == {"k": deep, "z": b"1"}
    with pytest.raises(ValueError, match="end of input"):
        compact(b"[" * depth)


# -- properties checked against Python's own json module ------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(_json_values)
def test_compact_agrees_with_pythons_json(value: Any) -> None:
    indented = json.dumps(value, indent=2, ensure_ascii=False).encode()
    dense = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    html_safe = (
        dense.replace(b"<", b"\\u003c")
        .replace(b">", b"\\u003e")
        .replace(b"&", b"\\u0026")
        .replace("\u2028".encode(), b"\\u2028")
        .replace("\u2029".encode(), b"\\u2029")
    )
    assert compact(indented) == html_safe
    assert json.loads(compact(indented)) == value


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text())
def test_encode_string_agrees_with_pythons_json(text: str) -> None:
    encoded = encode_string(text)
    surrogate_free = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    assert json.loads(encoded) == surrogate_free
    assert decode_string(encoded) == surrogate_free
    assert encoded.decode("utf-8")  # always valid UTF-8


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.text(max_size=6), _json_values, max_size=6))
def test_split_then_marshal_agrees_with_pythons_json(value: dict[str, Any]) -> None:
    raw = json.dumps(value, ensure_ascii=True).encode()
    fields = split_object(raw)
    assert set(fields) == {k if not _has_surrogate(k) else _replaced(k) for k in value}
    marshalled = marshal_object(fields)
    assert list(json.loads(marshalled)) == sorted(fields, key=lambda k: k.encode())


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _replaced(text: str) -> str:
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


# -- hostile input: every parser fails only with ValueError -----------------------------------

_SEEDS = [A0, A1, A3, IMAGE_A_19, IMAGE_B_182, CONTAINER, LEGACY_TAGS, b"null", b"{}"]
_TOKENS = [
    b"{", b"}", b"[", b"]", b",", b":", b" ", b"null", b"true", b"0", b"-1.5e3", b"1e999",
    b'"a"', b'"Image"', b'"created"', b'"Cmd"', b'"config"', b'"Repositories"', b'"Size"',
    b'"docker_version"', b'"1.8.2"', b'"2016-01-02T03:04:05Z"', b'"0000-01-00T00:00:00Z"',
    b'"\\ud800"', b'"sha256:"', b"\xff", b'"parent_id"', b'"Labels"', b'"Env"',
]  # fmt: skip


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "token"]))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.sampled_from(_TOKENS))
    return bytes(data)


_hostile = (
    _mutated()
    | st.binary(max_size=200)
    | st.lists(st.sampled_from(_TOKENS), max_size=40).map(b"".join)
)


def _only_value_errors(raw: bytes) -> None:
    for parse in (
        parse_legacy_image,
        split_object,
        lambda data: migrate_tags(data, MAPPING),
        container_image,
        gojson.compact,
    ):
        try:
            parse(raw)
        except ValueError:
            pass


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_hostile)
def test_hostile_input_raises_only_value_error(raw: bytes) -> None:
    _only_value_errors(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"a":' * 100_000, id="deep-unclosed-objects"),
        pytest.param(b'"' + b"\\u0000" * 200_000 + b'"', id="long-escaped-string"),
        pytest.param(
            b'{"created":"2016-01-02T03:04:05.' + b"0" * 50_000 + b'1Z"}', id="long-fraction"
        ),
        pytest.param(b'{"Size":' + b"9" * 50_000 + b"}", id="long-number"),
        pytest.param(b'{"Repositories":{"' + b"a" * 300 + b'-!":{"t":"1"}}}', id="long-name"),
    ],
)
def test_large_hostile_input(raw: bytes) -> None:
    _only_value_errors(raw)
