"""Container configs to config.v2.json: TestMigrateContainers (spec 4.1, 4.3-C) and 4.3-B."""

from __future__ import annotations

import hashlib
import json

import pytest

from migrate.containers import MissingImageError, container_image, rewrite_container_config
from migrate.digest import ImageID, chain_ids
from migrate.imageconfig import parse_config
from tests.test_imageconfig import CTR, vfs_expected_text, vfs_host_file

_ID = "f780ee3f80e66e9b432a57049597118a66aab8932be88e5628d4c824edbee37c"
_DIR = b"/var/lib/docker/containers/" + _ID.encode()

# TestMigrateContainers' container (moby v1.10.3 migrate/v1/migratev1_test.go) ...
CONTAINER = (
    b'{"State":{"Running":false,"Paused":false,"Restarting":false,"OOMKilled":false,"Dead":false,'
    b'"Pid":0,"ExitCode":0,"Error":"","StartedAt":"2015-11-10T21:42:40.604267436Z",'
    b'"FinishedAt":"2015-11-10T21:42:41.869265487Z"},"ID":"' + _ID.encode() + b'",'
    b'"Created":"2015-11-10T21:42:40.433831551Z","Path":"sh","Args":[],"Config":{"Hostname":'
    b'"f780ee3f80e6","Domainname":"","User":"","AttachStdin":true,"AttachStdout":true,'
    b'"AttachStderr":true,"Tty":true,"OpenStdin":true,"StdinOnce":true,"Env":null,"Cmd":["sh"],'
    b'"Image":"busybox","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,'
    b'"Labels":{}},"Image":"2c5ac3f849df8627fcf2822727f87c57f38b7129d3604fbc11d861fe856ff093",'
    b'"NetworkSettings":{"Bridge":"","EndpointID":"","Gateway":"","GlobalIPv6Address":"",'
    b'"GlobalIPv6PrefixLen":0,"HairpinMode":false,"IPAddress":"","IPPrefixLen":0,"IPv6Gateway":"",'
    b'"LinkLocalIPv6Address":"","LinkLocalIPv6PrefixLen":0,"MacAddress":"","NetworkID":"",'
    b'"PortMapping":null,"Ports":null,"SandboxKey":"","SecondaryIPAddresses":null,'
    b'"SecondaryIPv6Addresses":null},"ResolvConfPath":"' + _DIR + b'/resolv.conf",'
    b'"HostnamePath":"' + _DIR + b'/hostname","HostsPath":"' + _DIR + b'/hosts",'
    b'"LogPath":"' + _DIR + b"/" + _ID.encode() + b'-json.log","Name":"/determined_euclid",'
    b'"Driver":"overlay","ExecDriver":"native-0.2","MountLabel":"","ProcessLabel":"",'
    b'"RestartCount":0,"UpdateDns":false,"HasBeenStartedBefore":false,"MountPoints":{},'
    b'"Volumes":{},"VolumesRW":{},"AppArmorProfile":""}'
)
# ... and the image config the test stores for it (given to is.Create as is).
IMAGE_CONFIG = (
    b'{"architecture":"amd64","config":{"AttachStdin":false,"AttachStdout":false,'
    b'"AttachStderr":false,"Cmd":["sh"],"Entrypoint":null,"Env":null,"Hostname":"23304fc829f9",'
    b'"Image":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","Labels":null,'
    b'"OnBuild":null,"OpenStdin":false,"StdinOnce":false,"Tty":false,"Volumes":null,'
    b'"WorkingDir":"","Domainname":"","User":""},'
    b'"container":"349b014153779e30093d94f6df2a43c7a0a164e05aa207389917b540add39b51",'
    b'"container_config":{"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,'
    b'"Cmd":["/bin/sh","-c","#(nop) CMD [\\"sh\\"]"],"Entrypoint":null,"Env":null,'
    b'"Hostname":"23304fc829f9",'
    b'"Image":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","Labels":null,'
    b'"OnBuild":null,"OpenStdin":false,"StdinOnce":false,"Tty":false,"Volumes":null,'
    b'"WorkingDir":"","Domainname":"","User":""},"created":"2015-10-31T22:22:55.613815829Z",'
    b'"docker_version":"1.8.2","history":[{"created":"2015-10-31T22:22:54.690851953Z",'
    b'"created_by":"/bin/sh -c #(nop) ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281fe3f282c'
    b'65fb853ee171c5 in /"},{"created":"2015-10-31T22:22:55.613815829Z","created_by":'
    b'"/bin/sh -c #(nop) CMD [\\"sh\\"]"}],"os":"linux","rootfs":{"type":"layers","diff_ids":'
    b'["sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1",'
    b'"sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"]}}'
)


def test_migrate_containers_vector() -> None:
    image_id = ImageID.of(IMAGE_CONFIG)
    assert str(image_id) == (
        "sha256:32ef8bbc595aad206c91d61fe6446f292852cf0d7c6baf00f0f8b9cd4069d6f6"
    )
    diff_ids, _ = parse_config(IMAGE_CONFIG)
    assert str(chain_ids(diff_ids)[-1]) == (
        "sha256:c3191d32a37d7159b2e30830937d2e30268ad6c375a773a8994911a3aba9b93f"
    )
    assert container_image(CONTAINER) == (
        "2c5ac3f849df8627fcf2822727f87c57f38b7129d3604fbc11d861fe856ff093"
    )

    v2 = rewrite_container_config(CONTAINER, image_id)

    assert len(v2) == 1853
    assert hashlib.sha256(v2).hexdigest() == (
        "b05acf417471ea76ddb4f9aca5f217f22a2a5983c8ac5677b559b4cb8a2561c3"
    )
    parsed = json.loads(v2)
    assert list(parsed) == [
        "AppArmorProfile", "Args", "Config", "Created", "Driver", "ExecDriver",
        "HasBeenStartedBefore", "HostnamePath", "HostsPath", "ID", "Image", "LogPath",
        "MountLabel", "MountPoints", "Name", "NetworkSettings", "Path", "ProcessLabel",
        "ResolvConfPath", "RestartCount", "State", "UpdateDns", "Volumes", "VolumesRW",
    ]  # fmt: skip
    assert list(parsed["State"])[:2] == ["Running", "Paused"]  # nested order kept
    assert parsed["Image"] == str(image_id)


def test_vfs_run_container() -> None:
    raw = vfs_host_file(f"containers/{CTR}/config.json")
    image_id = ImageID.parse(
        "sha256:dcedaea6a4d739a7d2b8478bc802cb88a6eac5a47070d7199113b222a5fb657a"
    )
    assert container_image(raw) == "2" * 64
    expected = vfs_expected_text(f"containers/{CTR}/config.v2.json")
    assert rewrite_container_config(raw, image_id) == expected


@pytest.mark.parametrize(
    ("raw", "image"),
    [
        pytest.param(b'{"Image":"abc"}', "abc", id="plain"),
        pytest.param(b'{"Image":"a","Image":"b"}', "b", id="last-duplicate-wins"),
        pytest.param(b'{"Image":null}', "", id="null-reads-empty"),
        pytest.param(b'{"Image":"\\u0061\xff"}', "a\ufffd", id="go-string-decoding"),
        pytest.param(b' {"image":5, "Image":"x"} ', "x", id="map-keys-are-exact"),
    ],
)
def test_container_image(raw: bytes, image: str) -> None:
    assert container_image(raw) == image


@pytest.mark.parametrize(
    ("raw", "missing"),
    [
        pytest.param(b'{"ID":"x"}', True, id="no-image-is-fatal"),
        pytest.param(b'{"image":"x"}', True, id="lower-case-key-is-not-image"),
        pytest.param(b"null", True, id="null-config-is-fatal"),
        pytest.param(b"[]", False, id="array"),
        pytest.param(b'{"Image":5}', False, id="number-image"),
        pytest.param(b'{"Image":"x"', False, id="truncated"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_container_image_errors(raw: bytes, missing: bool) -> None:
    with pytest.raises(ValueError) as error:
        container_image(raw)
    assert isinstance(error.value, MissingImageError) is missing


def test_rewrite_sorts_keys_escapes_html_and_keeps_raw_values() -> None:
    raw = b'{"b": [1, 2.50, "<&>"], "Image": "old", "a": {"z": null, "y": "\\u00e9"}}'
    image_id = ImageID.of(b"x")
    assert rewrite_container_config(raw, image_id) == (
        b'{"Image":"' + str(image_id).encode() + b'","a":{"z":null,"y":"\\u00e9"},'
        b'"b":[1,2.50,"\\u003c\\u0026\\u003e"]}'
    )
