"""Mutated legacy input reaches the readers: they refuse it with the project's errors only.

Seeds are real: a tar-split stream recorded from a tar with files, links and a long name, and the
JSON files of a built sample host. Hypothesis flips bits, cuts, re-types fields and re-frames
them (gzip'd or raw); every reader must then return or raise a MigrateError, never another
exception, and each example must finish well inside its deadline.
"""

from __future__ import annotations

import atexit
import gzip
import io
import json
import shutil
import tarfile
import tempfile
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import Options, build_host, scenario
from migrate import containers, distribution, gojson, references
from migrate.confine import ConfinedRoot
from migrate.digest import EMPTY_TAR_DIFF_ID, ImageID
from migrate.errors import MigrateError
from migrate.imageconfig import make_config, parse_config, parse_legacy_image
from migrate.tarsplit import assemble, disassemble, read_entries

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=5),  # generous on a busy machine; a hang is far beyond it
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def _scratch() -> Path:
    path = Path(tempfile.mkdtemp(prefix="graph-migrate-fuzz."))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def _layer() -> tuple[Path, bytes]:
    """A layer directory and the gzip'd tar-split stream of its tar."""
    root = _scratch() / "layer"
    (root / "etc/deep").mkdir(parents=True)
    (root / "etc/passwd").write_bytes(b"root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/deep/big").write_bytes(bytes(range(256)) * 40)
    (root / "etc/deep/empty").write_bytes(b"")
    (root / "etc" / ("long-name-" * 12)).write_bytes(b"pax path\n")
    (root / "etc/link").symlink_to("passwd")
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(root, arcname=".", recursive=True)
    out = io.BytesIO()
    disassemble(io.BytesIO(tar.getvalue()), out)
    return root, out.getvalue()


@cache
def _json_seeds() -> dict[str, list[bytes]]:
    host = build_host(scenario("sample", Options(driver="vfs")), _scratch() / "host")
    return {
        "image": [p.read_bytes() for p in sorted((host.root / "graph").glob("*/json"))],
        "tags": [(host.root / "repositories-vfs").read_bytes()],
        "container": [p.read_bytes() for p in sorted(host.root.glob("containers/*/config.json"))],
    }


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    mutated = bytearray(data)
    for position, bit in flips:
        if mutated:
            mutated[position % len(mutated)] ^= 1 << bit
    return bytes(mutated)


_FLIPS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=8)
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _mutated_stream(draw: st.DrawFn) -> bytes:
    """A tar-split stream damaged at the gzip level or in its JSON lines."""
    compressed = _layer()[1]
    how = draw(st.sampled_from(["lines", "lines", "lines", "cut-gzip", "flip-gzip"]))
    if how == "flip-gzip":
        return _flip(compressed, draw(_FLIPS))
    if how == "cut-gzip":
        return compressed[: draw(st.integers(0, len(compressed)))]

    lines = gzip.decompress(compressed).splitlines(keepends=True)
    index = draw(st.integers(0, len(lines) - 1))
    line = lines[index]
    change = draw(st.sampled_from(["flip", "cut", "retype", "drop-key", "insert"]))
    if change == "flip":
        line = _flip(line, draw(_FLIPS))
    elif change == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif change in ("retype", "drop-key"):
        entry: dict[str, Any] = json.loads(line)
        key = draw(st.sampled_from([*sorted(entry), "name_raw", "payload"]))
        if change == "drop-key":
            entry.pop(key, None)
        else:
            entry[key] = draw(_JSON_VALUES)
        line = json.dumps(entry).encode() + b"\n"
    else:
        line = json.dumps(draw(_JSON_VALUES)).encode() + b"\n" + line
    lines[index] = line
    raw = b"".join(lines)
    framing = draw(st.sampled_from(["gzip", "gzip", "gzip", "raw"]))
    return raw if framing == "raw" else gzip.compress(raw, mtime=0)


def _only_our_errors(call: Any, *args: Any) -> None:
    try:
        result = call(*args)
        if hasattr(result, "__next__"):
            list(result)
    except MigrateError:
        pass


@FUZZ
@given(_mutated_stream())
def test_mutated_tar_split_streams_raise_only_our_errors(stream: bytes) -> None:
    root, _ = _layer()
    _only_our_errors(read_entries, io.BytesIO(stream))
    with ConfinedRoot(root) as files:
        _only_our_errors(assemble, io.BytesIO(stream), files)


@FUZZ
@given(st.binary(max_size=2048), st.booleans())
def test_arbitrary_bytes_as_tar_split_raise_only_our_errors(data: bytes, wrap: bool) -> None:
    root, _ = _layer()
    stream = gzip.compress(data, mtime=0) if wrap else data
    with ConfinedRoot(root) as files:
        _only_our_errors(assemble, io.BytesIO(stream), files)


@st.composite
def _mutated_json(draw: st.DrawFn, kind: str) -> bytes:
    seed = draw(st.sampled_from(_json_seeds()[kind]))
    how = draw(st.sampled_from(["flip", "cut", "retype", "value"]))
    if how == "flip":
        return _flip(seed, draw(_FLIPS))
    if how == "cut":
        return seed[: draw(st.integers(0, len(seed)))]
    if how == "value":
        return json.dumps(draw(_JSON_VALUES)).encode()
    document = json.loads(seed)
    if isinstance(document, dict) and document:
        key = draw(st.sampled_from(sorted(document)))
        target = document[key]
        if isinstance(target, dict) and target and draw(st.booleans()):
            target[draw(st.sampled_from(sorted(target)))] = draw(_JSON_VALUES)
        else:
            document[key] = draw(_JSON_VALUES)
    return json.dumps(document).encode()


def _image_pipeline(raw: bytes) -> None:
    image = parse_legacy_image(raw)
    raw_config = make_config(image, (EMPTY_TAR_DIFF_ID,), (image.history,))
    parse_config(raw_config)


IMAGE = ImageID.of(b"{}")


@FUZZ
@given(_mutated_json("image"))
def test_mutated_image_json_raises_only_our_errors(raw: bytes) -> None:
    _only_our_errors(gojson.parse, raw)
    _only_our_errors(_image_pipeline, raw)
    _only_our_errors(distribution.parse_checksum, raw)


@FUZZ
@given(_mutated_json("tags"))
def test_mutated_tag_file_raises_only_our_errors(raw: bytes) -> None:
    repositories = json.loads(_json_seeds()["tags"][0])["Repositories"]
    mapping = {v1_id: IMAGE for tags in repositories.values() for v1_id in tags.values()}
    _only_our_errors(references.migrate_tags, raw, mapping)
    _only_our_errors(references.parse_repositories_json, raw)


@FUZZ
@given(_mutated_json("container"))
def test_mutated_container_config_raises_only_our_errors(raw: bytes) -> None:
    _only_our_errors(containers.container_image, raw)
    _only_our_errors(containers.rewrite_container_config, raw, IMAGE)


def test_deeply_nested_json_is_refused_with_our_errors() -> None:
    for raw in (b"[" * 200_000, b'{"a":' * 100_000, b"[" * 50_000 + b"]" * 50_000):
        _only_our_errors(gojson.parse, raw)
        _only_our_errors(_image_pipeline, raw)
        stream = gzip.compress(raw, mtime=0)
        _only_our_errors(read_entries, io.BytesIO(stream))
