"""Distribution metadata and the v1 map file: TestMigrateImages (spec 4.1) and 4.3-B bytes."""

from __future__ import annotations

import pytest

from migrate.digest import EMPTY_TAR_DIFF_ID, BlobDigest, DiffID, ImageID
from migrate.distribution import (
    MAX_V2_METADATA,
    add_v2_metadata,
    diffid_by_digest,
    images_map_json,
    parse_checksum,
    parse_images_map,
)
from tests.test_imageconfig import IMAGE_A_ID, IMAGE_B_ID, ONE, vfs_expected_text, vfs_host_file

BLOB_A = "sha256:55dc925c23d1ed82551fd018c27ac3ee731377b6bad3963a2a4e76e753d70e57"
BLOB_B = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
V1_A = "d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498"
V1_B = "17583c7dd0dae6244203b8029733bdb7d17fccbb2b5d93e2b24cf48b8bfd06e2"
VFS_BASE_DIFF_ID = "sha256:c907ff4d6ba2c788284fcafe6cacae28fb2fbbc6ccad8e15ba8d183a904dd699"


def _checksum(text: str) -> BlobDigest:
    digest = parse_checksum(text.encode())
    assert digest is not None
    return digest


def _entry(digest: str) -> bytes:
    return b'{"Digest":"' + digest.encode() + b'","SourceRepository":""}'


def test_migrate_images_v2_metadata() -> None:
    # d1592a71 is migrated before 17583c7d (its child), both onto the empty-layer diff ID.
    first = add_v2_metadata(None, _checksum(BLOB_A))
    second = add_v2_metadata(first, _checksum(BLOB_B))

    assert second == (
        b'[{"Digest":"sha256:55dc925c23d1ed82551fd018c27ac3ee731377b6bad3963a2a4e76e753d70e57",'
        b'"SourceRepository":""},{"Digest":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422'
        b'd00e8a7c22955b46d4","SourceRepository":""}]'
    )
    assert diffid_by_digest(EMPTY_TAR_DIFF_ID) == (
        b"sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    )


def test_migrate_images_map_file() -> None:
    mapping = {V1_B: ImageID.parse(IMAGE_B_ID), V1_A: ImageID.parse(IMAGE_A_ID)}
    assert images_map_json(mapping) == (
        b'{"17583c7dd0dae6244203b8029733bdb7d17fccbb2b5d93e2b24cf48b8bfd06e2":"sha256:a488bec94bb96b2'
        b'6a968f913d25ef7d8d204d727ca328b52b4b059c7d03260b6","d1592a710ac323612bd786fa8ac20727c58d8a6'
        b'7847e5a65177c594f43919498":"sha256:ca406eaf9c26898414ff5b7b3a023c33310759d6203be0663dbf1b3a'
        b'712f432d"}\n'
    )


def test_vfs_run_distribution_and_map() -> None:
    digest = parse_checksum(vfs_host_file(f"graph/{ONE}/checksum"))
    assert digest is not None
    diff_id = DiffID.parse(VFS_BASE_DIFF_ID)
    base = "image/vfs/distribution"

    assert add_v2_metadata(None, digest) == vfs_expected_text(
        f"{base}/v2metadata-by-diffid/sha256/{diff_id.hex}"
    )
    assert diffid_by_digest(diff_id) == vfs_expected_text(
        f"{base}/diffid-by-digest/sha256/{digest.hex}"
    )
    map_file = vfs_expected_text(".migration-v1-images.json")
    mapping = {v1: ImageID.parse(image) for v1, image in parse_images_map(map_file).items()}
    assert images_map_json(mapping) == map_file


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(BLOB_A, id="sha256"),
        pytest.param("sha384:" + "0" * 96, id="sha384"),
        pytest.param("sha512:" + "f" * 128, id="sha512"),
        pytest.param("sha256:" + "A" * 64, id="upper-case-hex"),
    ],
)
def test_checksum_accepted(text: str) -> None:
    digest = parse_checksum(text.encode())
    assert digest is not None
    assert str(digest) == text


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(BLOB_A.encode() + b"\n", id="trailing-newline"),
        pytest.param(b" " + BLOB_A.encode(), id="leading-space"),
        pytest.param(b"tarsum.v1+sha256:" + b"0" * 64, id="tarsum"),
        pytest.param(b"sha256:" + b"0" * 63, id="short"),
        pytest.param(b"sha256:" + b"0" * 96, id="sha384-length"),
        pytest.param(b"SHA256:" + b"0" * 64, id="upper-case-algorithm"),
        pytest.param(b"md5:" + b"0" * 32, id="md5"),
        pytest.param(b"sha256:" + b"g" * 64, id="not-hex"),
        pytest.param(b"sha256:", id="no-hex"),
        pytest.param(b"", id="empty"),
        pytest.param(b"sha256:\xff" + b"0" * 63, id="not-ascii"),
    ],
)
def test_checksum_ignored(raw: bytes) -> None:
    assert parse_checksum(raw) is None


def test_v2_metadata_moves_a_repeated_digest_to_the_end() -> None:
    existing = b"[" + _entry(BLOB_A) + b"," + _entry(BLOB_B) + b"]"
    assert add_v2_metadata(existing, _checksum(BLOB_A)) == (
        b"[" + _entry(BLOB_B) + b"," + _entry(BLOB_A) + b"]"
    )


def test_v2_metadata_keeps_the_newest_fifty() -> None:
    digests = [f"sha256:{n:064x}" for n in range(MAX_V2_METADATA + 5)]
    content: bytes | None = None
    for digest in digests:
        content = add_v2_metadata(content, _checksum(digest))
    assert content == b"[" + b",".join(_entry(d) for d in digests[-MAX_V2_METADATA:]) + b"]"


@pytest.mark.parametrize(
    ("existing", "kept"),
    [
        pytest.param(b"null", b"", id="null"),
        pytest.param(b"{}", b"", id="object-discarded"),
        pytest.param(b"[1]", b"", id="bad-entry-discards-all"),
        pytest.param(b"[{", b"", id="corrupt"),
        pytest.param(b"", b"", id="empty-file"),
        pytest.param(
            b'[ {"digest" : "x", "HMAC": "h"} ]', _entry("x") + b",", id="re-encoded-the-go-way"
        ),
        pytest.param(b"[null]", _entry("") + b",", id="null-entry-is-zero"),
        pytest.param(b'[{"Digest":"<"}]', _entry("\\u003c") + b",", id="html-escaped"),
    ],
)
def test_v2_metadata_reads_existing_as_docker_did(existing: bytes, kept: bytes) -> None:
    assert add_v2_metadata(existing, _checksum(BLOB_A)) == b"[" + kept + _entry(BLOB_A) + b"]"


def test_images_map_empty() -> None:
    assert images_map_json({}) == b"{}\n"


@pytest.mark.parametrize(
    ("raw", "mapping"),
    [
        pytest.param(b'{"a":"sha256:x"}\n', {"a": "sha256:x"}, id="plain"),
        pytest.param(b"null", {}, id="null"),
        pytest.param(b'{"a":null} {', {"a": ""}, id="first-value-only"),
    ],
)
def test_parse_images_map(raw: bytes, mapping: dict[str, str]) -> None:
    assert parse_images_map(raw) == mapping


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"a":1}', id="number"),
        pytest.param(b'{"a":', id="truncated"),
    ],
)
def test_parse_images_map_rejects(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_images_map(raw)
