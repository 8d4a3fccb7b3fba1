"""Legacy image JSON to image config: the spec's vectors (4.1, 4.3-A, 4.3-B) and Go's rules."""

from __future__ import annotations

import hashlib
import json
import tarfile
from functools import cache

import pytest

from migrate.digest import EMPTY_TAR_DIFF_ID, DiffID, ImageID, chain_ids
from migrate.imageconfig import (
    ZERO_TIME,
    HistoryItem,
    LegacyImage,
    make_config,
    parse_config,
    parse_legacy_image,
)
from tests.conftest import require_dir, spec_vectors

# -- shared vector data (other test modules import these) ------------------------------------

VECTORS = spec_vectors("vfs-run")

ONE, TWO, THREE, CTR = "1" * 64, "2" * 64, "3" * 64, "c" * 64


def _require_vectors() -> None:
    require_dir(VECTORS, "spec vectors")


@cache
def _host_files() -> dict[str, bytes]:
    with tarfile.open(VECTORS / "host.tar.gz") as archive:
        return {
            member.name.removeprefix("./"): archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive.getmembers()
            if member.isfile()
        }


def vfs_host_file(path: str) -> bytes:
    """A file of the spec's legacy vfs root (``vectors/vfs-run/host.tar.gz``)."""
    _require_vectors()
    return _host_files()[path]


def vfs_expected_text(path: str) -> bytes:
    """The exact bytes Docker 1.10.3 wrote at ``path`` for that root (``expected.json``)."""
    _require_vectors()
    entry = json.loads((VECTORS / "expected.json").read_text())["files"][path]
    text: bytes = entry["text"].encode()
    assert hashlib.sha256(text).hexdigest() == entry["sha256"]
    return text


# TestMigrateImages (moby v1.10.3 migrate/v1/migratev1_test.go), spec 4.1: busybox as Docker 1.9
# stored it after a v2 pull (A, then B whose `parent` file names A) ...
IMAGE_A_19 = (
    b'{"architecture":"amd64","config":{"Hostname":"23304fc829f9","Domainname":"","User":"",'
    b'"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,'
    b'"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"",'
    b'"Entrypoint":null,"OnBuild":null,"Labels":null},'
    b'"container":"23304fc829f9b9349416f6eb1afec162907eba3a328f51d53a17f8986f865d65",'
    b'"container_config":{"Hostname":"23304fc829f9","Domainname":"","User":"","AttachStdin":false,'
    b'"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,'
    b'"Env":null,"Cmd":["/bin/sh","-c","#(nop) ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281'
    b'fe3f282c65fb853ee171c5 in /"],"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,'
    b'"OnBuild":null,"Labels":null},"created":"2015-10-31T22:22:54.690851953Z",'
    b'"docker_version":"1.8.2","layer_id":"sha256:55dc925c23d1ed82551fd018c27ac3ee731377b6bad3963'
    b'a2a4e76e753d70e57","os":"linux"}'
)
IMAGE_B_19 = (
    b'{"architecture":"amd64","config":{"Hostname":"23304fc829f9","Domainname":"","User":"",'
    b'"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,'
    b'"StdinOnce":false,"Env":null,"Cmd":["sh"],'
    b'"Image":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","Volumes":null,'
    b'"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},'
    b'"container":"349b014153779e30093d94f6df2a43c7a0a164e05aa207389917b540add39b51",'
    b'"container_config":{"Hostname":"23304fc829f9","Domainname":"","User":"","AttachStdin":false,'
    b'"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,'
    b'"Env":null,"Cmd":["/bin/sh","-c","#(nop) CMD [\\"sh\\"]"],'
    b'"Image":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","Volumes":null,'
    b'"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},'
    b'"created":"2015-10-31T22:22:55.613815829Z","docker_version":"1.8.2",'
    b'"layer_id":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",'
    b'"os":"linux",'
    b'"parent_id":"sha256:039b63dd2cbaa10d6015ea574392530571ed8d7b174090f032211285a71881d0"}'
)
# ... and the same two images as Docker 1.8.2 stored them after a v1 pull.
IMAGE_A_182 = (
    b'{"id":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498",'
    b'"created":"2015-10-31T22:22:54.690851953Z",'
    b'"container":"23304fc829f9b9349416f6eb1afec162907eba3a328f51d53a17f8986f865d65",'
    b'"container_config":{"Hostname":"23304fc829f9","Domainname":"","User":"","AttachStdin":false,'
    b'"AttachStdout":false,"AttachStderr":false,"ExposedPorts":null,"PublishService":"",'
    b'"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":["/bin/sh","-c",'
    b'"#(nop) ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281fe3f282c65fb853ee171c5 in /"],'
    b'"Image":"","Volumes":null,"VolumeDriver":"","WorkingDir":"","Entrypoint":null,'
    b'"NetworkDisabled":false,"MacAddress":"","OnBuild":null,"Labels":null},'
    b'"docker_version":"1.8.2","config":{"Hostname":"23304fc829f9","Domainname":"","User":"",'
    b'"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"ExposedPorts":null,'
    b'"PublishService":"","Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,'
    b'"Image":"","Volumes":null,"VolumeDriver":"","WorkingDir":"","Entrypoint":null,'
    b'"NetworkDisabled":false,"MacAddress":"","OnBuild":null,"Labels":null},'
    b'"architecture":"amd64","os":"linux","Size":1108935}'
)
IMAGE_B_182 = (
    b'{"id":"17583c7dd0dae6244203b8029733bdb7d17fccbb2b5d93e2b24cf48b8bfd06e2",'
    b'"parent":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498",'
    b'"created":"2015-10-31T22:22:55.613815829Z",'
    b'"container":"349b014153779e30093d94f6df2a43c7a0a164e05aa207389917b540add39b51",'
    b'"container_config":{"Hostname":"23304fc829f9","Domainname":"","User":"","AttachStdin":false,'
    b'"AttachStdout":false,"AttachStderr":false,"ExposedPorts":null,"PublishService":"",'
    b'"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,'
    b'"Cmd":["/bin/sh","-c","#(nop) CMD [\\"sh\\"]"],'
    b'"Image":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","Volumes":null,'
    b'"VolumeDriver":"","WorkingDir":"","Entrypoint":null,"NetworkDisabled":false,"MacAddress":"",'
    b'"OnBuild":null,"Labels":null},"docker_version":"1.8.2","config":{"Hostname":"23304fc829f9",'
    b'"Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,'
    b'"ExposedPorts":null,"PublishService":"","Tty":false,"OpenStdin":false,"StdinOnce":false,'
    b'"Env":null,"Cmd":["sh"],'
    b'"Image":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","Volumes":null,'
    b'"VolumeDriver":"","WorkingDir":"","Entrypoint":null,"NetworkDisabled":false,"MacAddress":"",'
    b'"OnBuild":null,"Labels":null},"architecture":"amd64","os":"linux","Size":0}'
)
IMAGE_A_ID = "sha256:ca406eaf9c26898414ff5b7b3a023c33310759d6203be0663dbf1b3a712f432d"
IMAGE_B_ID = "sha256:a488bec94bb96b26a968f913d25ef7d8d204d727ca328b52b4b059c7d03260b6"

# Spec 4.3-A inputs.
A0 = (
    b"{\n"
    b'  "os": "linux", "id": "aaaa", "parent": "bbbb", "Size": 123, "throwaway": true,\n'
    b'  "docker_version": "1.9.1",\n'
    b'  "created": "2016-01-02T03:04:05.100000000Z",\n'
    b'  "container_config": {"Cmd": ["/bin/sh", "-c", "echo a && echo <b> \\u00e9 \\/x"],'
    b' "Labels": {"z": "1", "a": "2"}},\n'
    b'  "author": "Jo <jo@example.com>",\n'
    b'  "config": {"Env": ["PATH=/usr/bin"], "Cmd": null},\n'
    b'  "comment": "caf\xc3\xa9"\n'
    b"}"
)
A1 = (
    b'{"id":"cccc","created":"2014-05-06T07:08:09.500+02:00","container_config":{"Cmd":"/bin/sh '
    b'-c #(nop) CMD x","PortSpecs":null,"Memory":0,"ExposedPorts":{"80/tcp":{},"443/tcp":{}},'
    b'"Volumes":{"/data":{}}},"config":{"Cmd":"x","Memory":0,"ExposedPorts":{}},'
    b'"architecture":"amd64","Size":0}'
)
A2 = b'{"docker_version":"1.8.3-rc1","container_config":{"Cmd":null},"os":"linux"}'
A3 = (
    b'{"docker_version":"1.10.0-dev","created":"2016-01-02T03:04:05Z","container_config":'
    b'{"Cmd":["a","b"]},"Custom":{"k":[1, 2.50, 1e3]},"parent_id":"sha256:00",'
    b'"layer_id":"sha256:11"}'
)
A0_CONFIG = (
    b'{"author":"Jo \\u003cjo@example.com\\u003e","comment":"caf\xc3\xa9","config":{"Env":'
    b'["PATH=/usr/bin"],"Cmd":null},"container_config":{"Cmd":["/bin/sh","-c","echo a '
    b'\\u0026\\u0026 echo \\u003cb\\u003e \\u00e9 \\/x"],"Labels":{"z":"1","a":"2"}},'
    b'"created":"2016-01-02T03:04:05.100000000Z","docker_version":"1.9.1","history":[{"created":'
    b'"2016-01-02T03:04:05.1Z","author":"Jo \\u003cjo@example.com\\u003e","created_by":"/bin/sh -c '
    b'echo a \\u0026\\u0026 echo \\u003cb\\u003e \xc3\xa9 /x","comment":"caf\xc3\xa9"}],'
    b'"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:5f70bf18a086007016e948b04aed3b82'
    b'103a36bea41755b6cddfaf10ace3c6ef"]}}'
)
_CONFIG_ZERO_CMD_X = (
    b'{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
    b'"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,'
    b'"Cmd":["x"],"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,'
    b'"Labels":null}'
)
A1_CONFIG = (
    b'{"architecture":"amd64","config":' + _CONFIG_ZERO_CMD_X + b',"container_config":{'
    b'"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
    b'"AttachStderr":false,"ExposedPorts":{"443/tcp":{},"80/tcp":{}},"Tty":false,'
    b'"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":["/bin/sh -c #(nop) CMD x"],'
    b'"Image":"","Volumes":{"/data":{}},"WorkingDir":"","Entrypoint":null,"OnBuild":null,'
    b'"Labels":null},"created":"2014-05-06T07:08:09.5+02:00","history":[{"created":'
    b'"2014-05-06T07:08:09.5+02:00","created_by":"/bin/sh -c #(nop) CMD x"}],"rootfs":{"type":'
    b'"layers","diff_ids":["sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"'
    b"]}}"
)
IMAGE_A_CONFIG = (
    b'{"architecture":"amd64","config":{"Hostname":"23304fc829f9","Domainname":"","User":"",'
    b'"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,'
    b'"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"",'
    b'"Entrypoint":null,"OnBuild":null,"Labels":null},'
    b'"container":"23304fc829f9b9349416f6eb1afec162907eba3a328f51d53a17f8986f865d65",'
    b'"container_config":{"Hostname":"23304fc829f9","Domainname":"","User":"","AttachStdin":false,'
    b'"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,'
    b'"Env":null,"Cmd":["/bin/sh","-c","#(nop) ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281'
    b'fe3f282c65fb853ee171c5 in /"],"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,'
    b'"OnBuild":null,"Labels":null},"created":"2015-10-31T22:22:54.690851953Z",'
    b'"docker_version":"1.8.2","history":[{"created":"2015-10-31T22:22:54.690851953Z",'
    b'"created_by":"/bin/sh -c #(nop) ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281fe3f282c6'
    b'5fb853ee171c5 in /"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:5f70bf18a08'
    b'6007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"]}}'
)
_B_PARENT_TAIL = "2cbaa10d6015ea574392530571ed8d7b174090f032211285a71881d0"
_A_182_TAIL = "0ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498"
C6F9 = DiffID.parse("sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1")


def _one_layer(raw: bytes) -> bytes:
    image = parse_legacy_image(raw)
    return make_config(image, [EMPTY_TAR_DIFF_ID], [image.history])


def _two_layers(raw: bytes) -> bytes:
    image = parse_legacy_image(raw)
    history = [HistoryItem(ZERO_TIME), image.history]
    return make_config(image, [C6F9, EMPTY_TAR_DIFF_ID], history)


def _config_of(raw: bytes) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(_one_layer(raw))
    return parsed


# -- spec 4.3-A ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "input_sha256", "one_layer_id", "two_layer_id"),
    [
        pytest.param(
            A0,
            "a28dd479ca95385d2a6e3603a5233106ba703ee962dbdc060ce7aedb70aa9ea6",
            "sha256:64fcd83718f66b89677f2cf794ffd7d4221168cdfe3de6b670ac0a1effa87274",
            "sha256:45f63a65e27cf6c71827a94f1a786a009a68319d6df6ff0a8ced54327e9d27a9",
            id="A0-raw-values-html-escapes",
        ),
        pytest.param(
            A1,
            "878c3e5f639e69cac50d564160aa348fde40621203ba162f5091f0f67e87cb0d",
            "sha256:1fe87a0ed66cbe3b1f540d5d369cd5f282594a1c3afb05304d834ba392c9c49b",
            "sha256:e75180c455fc27e010d7af8a49f0589f6143f23762b1f1021be5d35e70808bbe",
            id="A1-fallback-without-version",
        ),
        pytest.param(
            A2,
            "403ab6de5252f7ff31a2e79bb31cde6653ea3273bb466da641d6ae8a5d027da6",
            "sha256:8209da74946f89a35e077f6f94da9d3c1d0453d60caafb37cff3773ac4b33c5f",
            "sha256:29f92de5b5c53f00a3bd6a11238233d872202324d10fdb5fedd36f108d7f9ddb",
            id="A2-rc-version-falls-back",
        ),
        pytest.param(
            A3,
            "163c5973649d98033e60159c29381402e06091db4593e57c82b982e4ddb60a4b",
            "sha256:519f45c5ec07defb95e967eabe3ca98c2961f7c06975b1b207cfb6a7130b7b97",
            "sha256:8a1dcc9870ff19300b8080d05c2a7176d556b17ce27de0ba1411fdd5d27e260e",
            id="A3-unknown-keys-and-numbers-kept",
        ),
    ],
)
def test_spec_a_vectors(
    raw: bytes, input_sha256: str, one_layer_id: str, two_layer_id: str
) -> None:
    assert hashlib.sha256(raw).hexdigest() == input_sha256
    assert str(ImageID.of(_one_layer(raw))) == one_layer_id
    assert str(ImageID.of(_two_layers(raw))) == two_layer_id


@pytest.mark.parametrize(
    ("raw", "config"),
    [pytest.param(A0, A0_CONFIG, id="A0"), pytest.param(A1, A1_CONFIG, id="A1")],
)
def test_spec_a_config_bytes(raw: bytes, config: bytes) -> None:
    assert len(A0) == 384
    assert _one_layer(raw) == config


# -- spec 4.1 TestMigrateImages, image/fs_test, image/store_test ------------------------------


@pytest.mark.parametrize(
    ("base", "child"),
    [
        pytest.param(IMAGE_A_19, IMAGE_B_19, id="docker-1.9-v2-pull"),
        pytest.param(IMAGE_A_182, IMAGE_B_182, id="docker-1.8.2-registry-form"),
    ],
)
def test_migrate_images_ids(base: bytes, child: bytes) -> None:
    parent, image = parse_legacy_image(base), parse_legacy_image(child)
    parent_config = make_config(parent, [EMPTY_TAR_DIFF_ID], [parent.history])
    diff_ids, history = parse_config(parent_config)
    config = make_config(image, [*diff_ids, EMPTY_TAR_DIFF_ID], [*history, image.history])

    assert str(ImageID.of(parent_config)) == IMAGE_A_ID
    assert str(ImageID.of(config)) == IMAGE_B_ID
    assert str(chain_ids([*diff_ids, EMPTY_TAR_DIFF_ID])[-1]) == (
        "sha256:170b376f64fb30995c140276be3d71dfb256b308d86183ca3b22aa93a79ad548"
    )


def test_migrate_images_config_bytes_of_a() -> None:
    assert _one_layer(IMAGE_A_19) == IMAGE_A_CONFIG


@pytest.mark.parametrize(
    ("raw", "parent"),
    [
        pytest.param(IMAGE_B_19, "039b63dd" + _B_PARENT_TAIL, id="hex-of-parent_id"),
        pytest.param(IMAGE_B_182, "d1592a71" + _A_182_TAIL, id="parent-key"),
        pytest.param(IMAGE_A_19, "", id="base"),
        pytest.param(b'{"parent":"p","parent_id":"sha256:q"}', "p", id="parent-key-wins"),
        pytest.param(b'{"Parent":"p"}', "p", id="key-case-ignored"),
        pytest.param(b'{"parent":"","parent_id":"x:y:z"}', "y:z", id="after-first-colon"),
        pytest.param(b'{"parent":null,"parent_id":null}', "", id="nulls"),
        pytest.param(b"null", "", id="null-document"),
    ],
)
def test_parent(raw: bytes, parent: str) -> None:
    assert parse_legacy_image(raw).parent == parent


@pytest.mark.parametrize(
    ("data", "image_id"),
    [
        pytest.param(
            b"foobar",
            "sha256:c3ab8ff13720e8ad9047dd39466b3c8974e592c2fa383d4a3960714caef0c4f2",
            id="image-fs_test",
        ),
        pytest.param(
            b'{"comment": "abc", "rootfs": {"type": "layers", "diff_ids": ["2c26b46b68ffc68ff99b45'
            b'3c1d30413413422d706483bfa0f98a5e886266e7ae"]}}',
            "sha256:8d25a9c45df515f9d0fe8e4a6b1c64dd3b965a84790ddbcc7954bb9bc89eb993",
            id="image-store_test",
        ),
    ],
)
def test_image_id_hashes_the_bytes_as_given(data: bytes, image_id: str) -> None:
    assert str(ImageID.of(data)) == image_id


# -- spec 4.3-B: the vfs run Docker 1.10.3 performed ------------------------------------------


def test_vfs_run_configs() -> None:
    base = parse_legacy_image(vfs_host_file(f"graph/{ONE}/json"))
    child = parse_legacy_image(vfs_host_file(f"graph/{TWO}/json"))
    # The diff ID of the one-file base layer, as Docker computed it (expected.json).
    base_diff_id = DiffID.parse(
        "sha256:c907ff4d6ba2c788284fcafe6cacae28fb2fbbc6ccad8e15ba8d183a904dd699"
    )

    base_config = make_config(base, [base_diff_id], [base.history])
    diff_ids, history = parse_config(base_config)
    child_config = make_config(child, [*diff_ids, EMPTY_TAR_DIFF_ID], [*history, child.history])

    content = "image/vfs/imagedb/content/sha256"
    base_id, child_id = ImageID.of(base_config), ImageID.of(child_config)
    assert base_config == vfs_expected_text(f"{content}/{base_id.hex}")
    assert child_config == vfs_expected_text(f"{content}/{child_id.hex}")
    assert child.parent == ONE


def test_vfs_run_orphan_still_parses() -> None:
    assert parse_legacy_image(vfs_host_file(f"graph/{THREE}/json")).parent == "9" * 64


# -- Go's decoding rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b'{"a":1,}', id="trailing-comma"),
        pytest.param(b"[]", id="array-document"),
        pytest.param(b'"x"', id="string-document"),
        pytest.param(b"1", id="number-document"),
        pytest.param(b'{"Size":"1"}', id="size-as-string"),
        pytest.param(b'{"Size":1.5}', id="size-fraction"),
        pytest.param(b'{"Size":1e3}', id="size-exponent"),
        pytest.param(b'{"Size":9223372036854775808}', id="size-overflow"),
        pytest.param(b'{"created":"yesterday"}', id="bad-time"),
        pytest.param(b'{"created":null}', id="null-time-go1.5"),
        pytest.param(b'{"created":1}', id="number-time"),
        pytest.param(b'{"container_config":{"Cmd":[1]}}', id="cmd-number-array"),
        pytest.param(b'{"container_config":{"Cmd":{}}}', id="cmd-object"),
        pytest.param(b'{"container_config":[]}', id="container-config-array"),
        pytest.param(b'{"config":"x"}', id="config-string"),
        pytest.param(b'{"config":{"Labels":{"a":1}}}', id="label-number"),
        pytest.param(b'{"config":{"Env":"PATH=/"}}', id="env-string"),
        pytest.param(b'{"config":{"Volumes":{"/v":1}}}', id="volume-number"),
        pytest.param(b'{"config":{"Tty":"true"}}', id="bool-string"),
        pytest.param(b'{"config":{"hostname":5}}', id="case-folded-key-typed"),
        pytest.param(b'{"docker_version":1.9}', id="version-number"),
        pytest.param(b'{"author":[]}', id="author-array"),
        pytest.param(b'{"parent_id":5}', id="parent-id-number"),
        pytest.param(b'{"parent_id":"abc"}', id="parent-id-without-colon"),
    ],
)
def test_rejected_like_go(raw: bytes) -> None:
    with pytest.raises(ValueError) as error:
        parse_legacy_image(raw)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("created", "history_created"),
    [
        pytest.param("2016-01-02T03:04:05Z", "2016-01-02T03:04:05Z", id="utc"),
        pytest.param("2016-01-02T03:04:05.100000000Z", "2016-01-02T03:04:05.1Z", id="trim-zeros"),
        pytest.param("2016-01-02T03:04:05.000Z", "2016-01-02T03:04:05Z", id="zero-fraction"),
        pytest.param("2016-01-02T03:04:05+00:00", "2016-01-02T03:04:05Z", id="plus-zero-is-z"),
        pytest.param("2016-01-02T03:04:05-00:00", "2016-01-02T03:04:05Z", id="minus-zero-is-z"),
        pytest.param("2016-01-02T03:04:05-07:30", "2016-01-02T03:04:05-07:30", id="offset-kept"),
        pytest.param("2016-01-02T3:04:05Z", "2016-01-02T03:04:05Z", id="one-digit-hour"),
        pytest.param("2015-02-31T00:00:00Z", "2015-03-03T00:00:00Z", id="feb-31-rolls-over"),
        pytest.param("2016-03-00T00:00:00Z", "2016-02-29T00:00:00Z", id="day-zero-rolls-back"),
        pytest.param(
            "2016-01-02T03:04:05.0000000001Z",
            "2016-01-02T03:04:05.000000001Z",
            id="ten-digits-read-as-nanoseconds",
        ),
    ],
)
def test_go_1_5_time(created: str, history_created: str) -> None:
    raw = b'{"docker_version":"1.9.1","created":"' + created.encode() + b'"}'
    image = parse_legacy_image(raw)
    assert image.history.created == history_created
    assert _config_of(raw)["created"] == created  # the raw value is kept outside the fallback


@pytest.mark.parametrize(
    "created",
    [
        pytest.param("2016-1-02T03:04:05Z", id="one-digit-month"),
        pytest.param("2016-13-02T03:04:05Z", id="month-13"),
        pytest.param("2016-01-32T03:04:05Z", id="day-32"),
        pytest.param("2016-01-02T24:04:05Z", id="hour-24"),
        pytest.param("2016-01-02T03:60:05Z", id="minute-60"),
        pytest.param("2016-01-02T03:04:05z", id="lower-z"),
        pytest.param("2016-01-02T03:04:05+0100", id="offset-without-colon"),
        pytest.param("2016-01-02T03:04:05.Z", id="empty-fraction"),
        pytest.param("2016-01-02T03:04:05.1000000000Z", id="fraction-a-second"),
        pytest.param("2016-01-02 03:04:05Z", id="space"),
        pytest.param("2016-01-02T03:04:05\\u005a", id="escaped-z"),
    ],
)
def test_go_1_5_time_rejected(created: str) -> None:
    with pytest.raises(ValueError, match="created"):
        parse_legacy_image(b'{"created":"' + created.encode() + b'"}')


def test_year_minus_one_history_becomes_null() -> None:
    # Go parses 0000-01-00 as 31 December of year -1, which Time.MarshalJSON refuses: Docker's
    # history marshalling failed and it wrote `null`; the re-marshalling fallback fails outright.
    raw = b'{"docker_version":"1.9.1","created":"0000-01-00T00:00:00Z"}'
    assert _config_of(raw)["history"] is None
    with pytest.raises(ValueError, match="0000-9999"):
        _one_layer(b'{"created":"0000-01-00T00:00:00Z"}')


@pytest.mark.parametrize(
    ("version", "fallback"),
    [
        pytest.param("", True, id="empty"),
        pytest.param("1.8.2", True, id="1.8.2"),
        pytest.param("1.8.3-rc1", True, id="rc-field-is-zero"),
        pytest.param("1.8", True, id="missing-field-is-zero"),
        pytest.param("1.8.3", False, id="1.8.3"),
        pytest.param("1.8.10", False, id="numeric-not-lexical"),
        pytest.param("1.10.0-dev", False, id="1.10-dev"),
        pytest.param("2", False, id="major-only"),
        pytest.param("+1.9", False, id="atoi-accepts-plus"),
        pytest.param("1.99999999999999999999", False, id="atoi-clamps"),
        pytest.param("v1.9.1", True, id="not-a-number"),
    ],
)
def test_fallback_version_rule(version: str, fallback: bool) -> None:
    config = _config_of(b'{"docker_version":"' + version.encode() + b'","os":"linux"}')
    # Only the re-marshalling adds `created` and a complete container_config.
    assert ("created" in config) is fallback
    assert ("container_config" in config) is fallback


@pytest.mark.parametrize(
    ("config_json", "expected"),
    [
        pytest.param(b'{"Cmd":"x"}', {"Cmd": ["x"]}, id="string-cmd"),
        pytest.param(b'{"Cmd":[]}', {"Cmd": []}, id="empty-cmd-kept"),
        pytest.param(b'{"Cmd":["a",null]}', {"Cmd": ["a", ""]}, id="null-element"),
        pytest.param(
            b'{"CMD":["a"],"hostname":"h"}', {"Cmd": ["a"], "Hostname": "h"}, id="keys-case-folded"
        ),
        pytest.param(
            '{"Wor\u212aingDir":"/w"}'.encode(), {"WorkingDir": "/w"}, id="kelvin-sign-folds-to-k"
        ),
        pytest.param(
            b'{"Labels":{"b":"1"},"Labels":{"a":null}}',
            {"Labels": {"a": "", "b": "1"}},
            id="maps-merge",
        ),
        pytest.param(b'{"Labels":{"b":"1"},"Labels":null}', {"Labels": None}, id="null-map"),
        pytest.param(
            b'{"Env":["a","b","c"],"Env":[null]}', {"Env": ["a"]}, id="slice-storage-reused"
        ),
        pytest.param(
            b'{"Env":["a","b","c"],"Env":["x"],"Env":[null,null,null]}',
            {"Env": ["x", "b", "c"]},
            id="truncated-storage-reappears",
        ),
        pytest.param(b'{"Env":["a"],"Env":[]}', {"Env": []}, id="empty-array-fresh"),
        pytest.param(b'{"Tty":true,"Tty":null}', {"Tty": True}, id="null-keeps-value"),
        pytest.param(b'{"ExposedPorts":{}}', {}, id="empty-ports-omitted"),
        pytest.param(
            b'{"Volumes":{"/v":{"ignored":[1]},"/w":null}}',
            {"Volumes": {"/v": {}, "/w": {}}},
            id="volume-values-emptied",
        ),
        pytest.param(
            b'{"StopSignal":"TERM","MacAddress":"m"}',
            {"MacAddress": "m", "StopSignal": "TERM"},
            id="omitempty-set",
        ),
    ],
)
def test_fallback_config_decoding(config_json: bytes, expected: dict[str, object]) -> None:
    config = _config_of(b'{"config":' + config_json + b"}")["config"]
    assert isinstance(config, dict)
    for name, value in expected.items():
        assert config[name] == value
    assert list(config)[:3] == ["Hostname", "Domainname", "User"]
    if "ExposedPorts" not in expected:
        assert "ExposedPorts" not in config


def test_fallback_keeps_field_order_and_drops_unknown_keys() -> None:
    config = _config_of(b'{"config":{"Labels":{"z":"1","a":"2"},"Unknown":1,"Tty":true}}')["config"]
    assert isinstance(config, dict)
    assert list(config) == [
        "Hostname",
        "Domainname",
        "User",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "Tty",
        "OpenStdin",
        "StdinOnce",
        "Env",
        "Cmd",
        "Image",
        "Volumes",
        "WorkingDir",
        "Entrypoint",
        "OnBuild",
        "Labels",
    ]
    assert list(config["Labels"]) == ["a", "z"]


def test_null_document_is_an_empty_image() -> None:
    config = _config_of(b"null")
    assert config["created"] == ZERO_TIME
    assert config["history"] == [{"created": ZERO_TIME}]
    assert sorted(config) == ["container_config", "created", "history", "rootfs"]


def test_non_fallback_keeps_raw_values_and_duplicate_last_wins() -> None:
    raw = b'{"docker_version":"1.9.1","os":"a","os":"b","size":5,"Size":6,"nested":{"b":1,"a":[ ]}}'
    config = _one_layer(raw)
    assert b'"os":"b"' in config
    assert b'"size":5' in config  # only the exact key "Size" is deleted
    assert b'"Size"' not in config
    assert b'"nested":{"b":1,"a":[]}' in config


def test_deep_nesting_is_accepted_without_recursion() -> None:
    depth = 100_000
    raw = b'{"docker_version":"1.9.1","deep":' + b"[" * depth + b"]" * depth + b"}"
    config = _one_layer(raw)
    assert config.count(b"[") == depth + 2  # the deep value, history and diff_ids
    with pytest.raises(ValueError):
        parse_legacy_image(b"[" * depth)


def test_history_item_json() -> None:
    item = HistoryItem("2016-01-01T00:00:00Z", author="<a>", created_by="", comment="c\u2028")
    assert item.to_json() == (
        b'{"created":"2016-01-01T00:00:00Z","author":"\\u003ca\\u003e","comment":"c\\u2028"}'
    )


def test_parse_config_reads_back_what_make_config_wrote() -> None:
    image = parse_legacy_image(A0)
    history = [HistoryItem(ZERO_TIME, author="x"), image.history]
    config = make_config(image, [C6F9, EMPTY_TAR_DIFF_ID], history)
    assert parse_config(config) == ([C6F9, EMPTY_TAR_DIFF_ID], history)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"history":[]}', id="no-rootfs"),
        pytest.param(b'{"rootfs":{"diff_ids":["sha256:x"]}}', id="bad-diff-id"),
        pytest.param(b'{"rootfs":[]}', id="rootfs-array"),
        pytest.param(b'{"rootfs":{},"history":{}}', id="history-object"),
        pytest.param(b'{"rootfs":{},"history":[{"created":"x"}]}', id="history-bad-time"),
    ],
)
def test_parse_config_rejects(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_config(raw)


def test_legacy_image_is_a_value() -> None:
    image = parse_legacy_image(b'{"author":"a"}')
    assert image == LegacyImage(b'{"author":"a"}', "", HistoryItem(ZERO_TIME, author="a"))
