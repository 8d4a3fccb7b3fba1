"""Legacy tags to references: TestMigrateRefs, reference/store_test (spec 4.1) and 4.3-B."""

from __future__ import annotations

import pytest

from migrate.digest import ImageID
from migrate.distribution import parse_images_map
from migrate.references import (
    TagOutcome,
    migrate_tags,
    normalize_name,
    parse_repositories_json,
    repositories_json,
)
from tests.test_imageconfig import vfs_expected_text, vfs_host_file

BUSYBOX_V1 = "b3ca410aa2c115c05969a7b2c8cf8a9fcf62c1340ed6a601c9ee50df337ec108"
REGISTRY_2_V1 = "5d165b8e4b203685301c815e95663231691d383fd5e3d3185d1ce3f8dddead3d"
DIGEST = "sha256:16a2a52884c2a9481ed267c2d46483eac7693b813a63132368ab098a71303f8a"

# TestMigrateRefs (moby v1.10.3 migrate/v1/migratev1_test.go).
LEGACY_TAGS = (
    b'{"Repositories":{"busybox":{"latest":"'
    + BUSYBOX_V1.encode()
    + b'","'
    + DIGEST.encode()
    + b'":"'
    + BUSYBOX_V1.encode()
    + b'"},"registry":{"2":"'
    + REGISTRY_2_V1.encode()
    + b'","latest":'
    b'"8d5547a9f329b1d3f93198cd661fb5117e5a96b721c5cf9a2c389e7dd4877128"}}}'
)
MAPPING = {
    REGISTRY_2_V1: ImageID.parse(
        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    ),
    BUSYBOX_V1: ImageID.parse(
        "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9"
    ),
    "abcdef3434c115c05969a7b2c8cf8a9fcf62c1340ed6a601c9ee50df337ec108": ImageID.parse(
        "sha256:56434342345ae68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    ),
}

# reference/store_test.go: the exact repositories.json the store must write.
STORE_TEST_JSON = (
    b'{"Repositories":{"busybox":{"busybox:latest":"sha256:91e54dfb11794fad694460162bf0cb0a4fa710cfa'
    b'3f60979c177d920813e267c"},"jess/hollywood":{"jess/hollywood:latest":"sha256:ae7a5519a0a55a2d4e'
    b'f20ddcbd5d0ca0888a1f7ab806acc8e2a27baf46f529fe"},"registry":{"registry@sha256:367eb40fd0330a7e'
    b'464777121e39d2f5b3e8e23a1e159342e53ab05c9e4d94e6":"sha256:24126a56805beb9711be5f4590cc2eb55ab8'
    b'd4a85ebd618eed72bb19fc50631c"},"registry:5000/foobar":{"registry:5000/foobar:HEAD":"sha256:470'
    b'022b8af682154f57a2163d030eb369549549cba00edc69e1b99b46bb924d6","registry:5000/foobar:alternate'
    b'":"sha256:ae300ebc4a4f00693702cfb0a5e0b7bc527b353828dc86ad09fb95c8a681b793","registry:5000/foo'
    b'bar:latest":"sha256:6153498b9ac00968d71b66cca4eac37e990b5f9eb50c26877eb8799c8847451b","registr'
    b'y:5000/foobar:master":"sha256:6c9917af4c4e05001b346421959d7ea81b6dc9d25718466a37a6add865dfd7fc'
    b'"}}}'
)


def _image(n: int) -> ImageID:
    return ImageID.of(str(n).encode())


def test_migrate_refs_vector() -> None:
    outcome = migrate_tags(LEGACY_TAGS, MAPPING)

    flat = {ref: str(image) for refs in outcome.references.values() for ref, image in refs.items()}
    assert flat == {
        "busybox:latest": "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
        f"busybox@{DIGEST}": (
            "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9"
        ),
        "registry:2": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    }
    assert [(name, tag) for name, tag, _ in outcome.dropped] == [("registry", "latest")]


def test_store_test_serialization() -> None:
    # Built in reverse order on purpose: the output order is the store's, not the caller's.
    references = parse_repositories_json(STORE_TEST_JSON)
    reversed_refs = {
        name: dict(reversed(references[name].items())) for name in reversed(references)
    }
    assert repositories_json(reversed_refs) == STORE_TEST_JSON
    assert str(
        references["registry"][
            "registry@sha256:367eb40fd0330a7e464777121e39d2f5b3e8e23a1e159342e53ab05c9e4d94e6"
        ]
    ) == ("sha256:24126a56805beb9711be5f4590cc2eb55ab8d4a85ebd618eed72bb19fc50631c")


def test_vfs_run_repositories() -> None:
    mapping = {
        v1: ImageID.parse(image)
        for v1, image in parse_images_map(vfs_expected_text(".migration-v1-images.json")).items()
    }
    outcome = migrate_tags(vfs_host_file("repositories-vfs"), mapping)

    assert repositories_json(outcome.references) == vfs_expected_text("image/vfs/repositories.json")
    assert [(name, tag) for name, tag, _ in outcome.dropped] == [("orphan", "latest")]


def test_empty_store() -> None:
    assert repositories_json({}) == b'{"Repositories":{}}'


@pytest.mark.parametrize(
    ("legacy", "normalised"),
    [
        pytest.param("busybox", "busybox", id="official"),
        pytest.param("library/busybox", "busybox", id="library-stripped"),
        pytest.param("docker.io/busybox", "busybox", id="default-host"),
        pytest.param("docker.io/library/busybox", "busybox", id="default-host-library"),
        pytest.param("index.docker.io/library/busybox", "busybox", id="legacy-host"),
        pytest.param("index.docker.io/jess/hollywood", "jess/hollywood", id="legacy-host-user"),
        pytest.param("library/library/x", "library/x", id="prefix-stripped-once"),
        pytest.param("jess/hollywood", "jess/hollywood", id="user"),
        pytest.param("localhost/foo", "localhost/foo", id="localhost-is-a-host"),
        pytest.param("localhost:5000/foo", "localhost:5000/foo", id="host-port"),
        pytest.param(
            "registry.example.com/a/b-c__d.e", "registry.example.com/a/b-c__d.e", id="separators"
        ),
        pytest.param("a---b", "a---b", id="many-dashes"),
        pytest.param("a" * 255, "a" * 255, id="longest"),
    ],
)
def test_normalize_name(legacy: str, normalised: str) -> None:
    assert normalize_name(legacy) == normalised


@pytest.mark.parametrize(
    "legacy",
    [
        pytest.param("Busybox", id="upper-case"),
        pytest.param("Example.com/foo", id="upper-case-host"),
        pytest.param("a" * 64, id="image-id"),
        pytest.param("library/" + "b" * 64, id="image-id-after-normalising"),
        pytest.param("a" * 256, id="too-long"),
        pytest.param("", id="empty"),
        pytest.param("foo/", id="empty-component"),
        pytest.param("a..b", id="double-period"),
        pytest.param("a___b", id="three-underscores"),
        pytest.param("-a", id="leading-dash"),
        pytest.param("a-", id="trailing-dash"),
        pytest.param("foo:tag", id="tag-in-name"),
        pytest.param("busybox\n", id="trailing-newline"),
        pytest.param("b\u00fcsybox", id="non-ascii"),
        pytest.param("a" * 250 + "-" * 4 + "!", id="backtracking-bait"),
    ],
)
def test_normalize_name_rejects(legacy: str) -> None:
    with pytest.raises(ValueError, match="invalid repository name"):
        normalize_name(legacy)


def _outcome(repositories: bytes, mapping: dict[str, ImageID]) -> TagOutcome:
    return migrate_tags(b'{"Repositories":' + repositories + b"}", mapping)


def test_collision_first_sorted_legacy_name_wins() -> None:
    mapping = {"1": _image(1), "2": _image(2), "3": _image(3)}
    outcome = _outcome(
        b'{"library/busybox":{"latest":"3"},"busybox":{"latest":"1"},'
        b'"docker.io/library/busybox":{"latest":"2"}}',
        mapping,
    )
    assert outcome.references == {"busybox": {"busybox:latest": _image(1)}}
    assert [(name, tag) for name, tag, _ in outcome.dropped] == [
        ("docker.io/library/busybox", "latest"),
        ("library/busybox", "latest"),
    ]
    assert "already set by 'busybox'" in outcome.dropped[0][2]


@pytest.mark.parametrize(
    ("repositories", "references", "dropped_reason"),
    [
        pytest.param(
            b'{"a":{"SHA256:' + b"0" * 64 + b'":"1"}}',
            {},
            "invalid tag",
            id="upper-case-algorithm-is-a-bad-tag",
        ),
        pytest.param(
            b'{"a":{"sha256:' + b"A" * 64 + b'":"1"}}',
            {"a": {"a@sha256:" + "A" * 64: _image(1)}},
            "",
            id="upper-case-hex-digest",
        ),
        pytest.param(b'{"a":{"sha256:abc":"1"}}', {}, "invalid tag", id="short-digest"),
        pytest.param(
            b'{"a":{"sha512:' + b"0" * 128 + b'":"1"}}',
            {"a": {"a@sha512:" + "0" * 128: _image(1)}},
            "",
            id="sha512-digest",
        ),
        pytest.param(b'{"a":{"' + b"x" * 129 + b'":"1"}}', {}, "invalid tag", id="long-tag"),
        pytest.param(b'{"a":{"_x.Y-1":"1"}}', {"a": {"a:_x.Y-1": _image(1)}}, "", id="tag-chars"),
        pytest.param(b'{"a":{".x":"1"}}', {}, "invalid tag", id="tag-leading-period"),
        pytest.param(b'{"sha256":{"latest":"1"}}', {}, "ambiguous", id="digest-algorithm-name"),
        pytest.param(b'{"A":{"latest":"1"}}', {}, "invalid repository name", id="bad-name"),
        pytest.param(b'{"a":{"latest":"9"}}', {}, "not migrated", id="unmapped"),
        pytest.param(b'{"a":{"latest":null}}', {}, "not migrated", id="null-id"),
        pytest.param(b'{"a":null}', {}, "", id="null-repository"),
    ],
)
def test_tag_rules(
    repositories: bytes, references: dict[str, dict[str, ImageID]], dropped_reason: str
) -> None:
    outcome = _outcome(repositories, {"1": _image(1)})
    assert outcome.references == references
    if dropped_reason:
        assert len(outcome.dropped) == 1
        assert dropped_reason in outcome.dropped[0][2]
    else:
        assert outcome.dropped == []


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        pytest.param(b"null", [], id="null-document"),
        pytest.param(b'{"Repositories":null}', [], id="null-repositories"),
        pytest.param(b"{}", [], id="no-repositories"),
        pytest.param(b'{"repositories":{"a":{"t":"1"}}}', ["a"], id="field-name-case-folded"),
        pytest.param(
            b'{"Repositories":{"a":{"t":"1"}}} trailing garbage', ["a"], id="only-first-value-read"
        ),
        pytest.param(
            b'{"Repositories":{"a":{"t":"1"}},"Repositories":{"b":{"t":"1"}}}',
            ["a", "b"],
            id="repeated-field-merges",
        ),
        pytest.param(
            b'{"Repositories":{"a":{"t":"1"},"a":{"u":"2"}}}', [], id="repeated-name-replaces"
        ),
    ],
)
def test_go_decoding_of_the_tag_file(raw: bytes, names: list[str]) -> None:
    outcome = migrate_tags(raw, {"1": _image(1)})
    assert sorted(outcome.references) == names


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"  \n", id="whitespace"),
        pytest.param(b'{"Repositories":{"a":{"t":"1"}', id="truncated"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"Repositories":[]}', id="repositories-array"),
        pytest.param(b'{"Repositories":{"a":"b"}}', id="repository-string"),
        pytest.param(b'{"Repositories":{"a":{"t":1}}}', id="id-number"),
    ],
)
def test_corrupt_tag_file(raw: bytes) -> None:
    with pytest.raises(ValueError):
        migrate_tags(raw, {"1": _image(1)})


def test_parse_repositories_json_rejects_non_image_ids() -> None:
    with pytest.raises(ValueError, match="invalid digest"):
        parse_repositories_json(b'{"Repositories":{"a":{"a:b":"nope"}}}')
