"""Many hosts, one ledger: concurrent real runs against a real PostgreSQL server, and SQLite.

Every host is a fixture root built by ``fixtures.build_host`` and migrated by its own
``graph-migrate run`` process; what the ledger and ``status --all-hosts`` say is checked against
each process's own ``--json`` report and the fixture's manifest, never against constants.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE, Popen
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner, Result

from fixtures import Host, build_host, scenario
from migrate.cli import app
from migrate.ledger import SCHEMA_VERSION, Ledger
from tests.services import Postgres, postgresql

pytestmark = pytest.mark.integration

# host ID -> (scenario, driver, extra options): sound and damaged hosts on every driver.
FLEET: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "web-01": ("sample", "aufs", ("--jobs", "2")),
    "web-02": ("sample", "overlay", ()),
    "db-01": ("missing-parent", "vfs", ()),
    "cache-01": ("crc-mismatch", "btrfs", ()),
    "audit-01": ("no-tarsplit", "vfs", ("--dry-run",)),
}

# A ledger records each upgrade step once; a new one takes them all.
_EVERY_VERSION = [{"version": v} for v in range(1, SCHEMA_VERSION + 1)]


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    with postgresql() as running:
        yield running


def _new_ledger(backend: str, request: pytest.FixtureRequest, directory: Path) -> str:
    """A URL of an empty ledger: a fresh database on the server, or a fresh SQLite file."""
    if backend == "sqlite":
        return f"sqlite:///{directory / f'ledger-{uuid.uuid4().hex[:8]}.db'}"
    pg: Postgres = request.getfixturevalue("server")
    name = f"fleet_{uuid.uuid4().hex[:12]}"
    pg.execute(f"CREATE DATABASE {name}")
    return pg.url(name)


def _graph_migrate(*args: str) -> list[str]:
    return [sys.executable, "-m", "migrate", *args]


def _environment(tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), **extra}


def _status(*args: str) -> Result:
    """``graph-migrate status ARGS`` in this process (the runs are the separate processes)."""
    return CliRunner().invoke(app, ["status", *args])


def _rows(url: str, sql: str, **params: object) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


@dataclass
class HostRun:
    """One host of the fleet: its fixture, its process's exit status and ``--json`` report."""

    host_id: str
    host: Host
    options: tuple[str, ...]
    exit_code: int
    report: dict[str, Any]
    seconds: float

    @property
    def dry_run(self) -> bool:
        return "--dry-run" in self.options


@dataclass
class Fleet:
    url: str
    hosts: dict[str, HostRun]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Every host of FLEET migrated at once, each by its own process, into one fresh ledger."""
    tmp = tmp_path_factory.mktemp(f"fleet-{request.param}")
    url = _new_ledger(request.param, request, tmp)
    built = {
        host_id: build_host(scenario(name), tmp / host_id, driver=driver)
        for host_id, (name, driver, _) in FLEET.items()
    }
    started = time.monotonic()
    processes = {
        host_id: _start(host_id, built[host_id], url, tmp, *options)
        for host_id, (_, _, options) in FLEET.items()
    }
    hosts = {}
    for host_id, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode in (0, 1), f"{host_id}: {err}"
        options = FLEET[host_id][2]
        seconds = time.monotonic() - started
        report = json.loads(out)
        hosts[host_id] = HostRun(
            host_id, built[host_id], options, process.returncode, report, seconds
        )
    return Fleet(url, hosts)


def _expected_state(run: HostRun) -> str:
    """The README's states: a finished dry run audits; a run migrates all or part."""
    if run.dry_run:
        return "audited"
    return "migrated" if run.exit_code == 0 else "partial"


def test_the_fleet_has_sound_and_damaged_hosts(fleet: Fleet) -> None:
    """The fleet is worth checking: some hosts skip images, some regenerate layers."""
    assert {run.exit_code for run in fleet.hosts.values()} == {0, 1}
    assert {run.host.driver for run in fleet.hosts.values()} == {"aufs", "overlay", "vfs", "btrfs"}
    sources = {layer["source"] for run in fleet.hosts.values() for layer in run.report["layers"]}
    assert sources == {"tar-split", "regenerated"}


def test_status_all_hosts_json_gives_each_hosts_last_run(fleet: Fleet) -> None:
    result = _status("--all-hosts", "--ledger", fleet.url, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)

    assert [entry["host"] for entry in document["hosts"]] == sorted(fleet.hosts)
    for entry in document["hosts"]:
        run = fleet.hosts[entry["host"]]
        totals = run.report["totals"]
        assert entry["root"] == str(run.host.root)
        assert entry["driver"] == run.host.driver
        assert entry["mode"] == ("dry-run" if run.dry_run else "run")
        assert entry["outcome"] == ("ok" if run.exit_code == 0 else "skipped")
        assert entry["state"] == _expected_state(run)
        assert entry["images_migrated"] == totals["migrated"]
        assert entry["images_skipped"] == totals["skipped"]
        assert entry["bytes_hashed"] == totals["bytes_hashed"]
        assert 0 < entry["seconds"] <= run.seconds
    states = [_expected_state(run) for run in fleet.hosts.values()]
    assert document["states"] == {state: states.count(state) for state in set(states)}


def test_status_all_hosts_prints_one_line_per_host_and_the_counts(fleet: Fleet) -> None:
    result = _status("--all-hosts", "--ledger", fleet.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()

    assert lines[0].split()[:3] == ["HOST", "ROOT", "DRIVER"]
    table = {line.split()[0]: line.split() for line in lines[1 : 1 + len(fleet.hosts)]}
    assert sorted(table) == sorted(fleet.hosts)
    for host_id, cells in table.items():
        run = fleet.hosts[host_id]
        totals = run.report["totals"]
        mode = "dry-run" if run.dry_run else "run"
        outcome = "ok" if run.exit_code == 0 else "skipped"
        assert cells[1:3] == [str(run.host.root), run.host.driver]
        assert cells[4:9] == [
            mode, outcome, _expected_state(run), str(totals["migrated"]), str(totals["skipped"])
        ]  # fmt: skip
        assert cells[9] == f"{totals['bytes_hashed'] / 1e6:.1f}"
    # Hosts that skipped images say which and why, under the table.
    for host_id, run in fleet.hosts.items():
        for image in run.report["images"]:
            if image["status"] != "migrated":
                assert any(
                    line.startswith(f"{host_id} ") and image["v1_id"][:12] in line for line in lines
                ), image
    states = sorted(_expected_state(run) for run in fleet.hosts.values())
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    assert lines[-1] == f"{len(fleet.hosts)} hosts, {len(fleet.hosts)} roots: {counts}"


def test_root_filter_keeps_the_runs_on_that_path_only(fleet: Fleet) -> None:
    root = str(fleet.hosts["db-01"].host.root)
    result = _status("--all-hosts", "--root", root, "--ledger", fleet.url, "--json")
    assert [entry["host"] for entry in json.loads(result.stdout)["hosts"]] == ["db-01"]


def test_every_row_is_the_hosts_own_report(fleet: Fleet) -> None:
    assert _rows(fleet.url, "SELECT version FROM schema_version ORDER BY version") == _EVERY_VERSION
    runs = _rows(fleet.url, "SELECT * FROM runs ORDER BY host")
    assert [row["host"] for row in runs] == sorted(fleet.hosts)
    for row in runs:
        run, totals = fleet.hosts[row["host"]], fleet.hosts[row["host"]].report["totals"]
        assert (row["root"], row["driver"]) == (str(run.host.root), run.host.driver)
        assert (row["images_migrated"], row["images_skipped"], row["bytes_hashed"]) == (
            totals["migrated"],
            totals["skipped"],
            totals["bytes_hashed"],
        )
        assert row["started_at"] <= row["ended_at"]
        _check_unit_rows(fleet.url, run, row["id"])


def _check_unit_rows(url: str, run: HostRun, run_id: int, *, earlier: int | None = None) -> None:
    """Layers, images and containers of one host: exactly what its report says.

    Every row is of run ``run_id``, except layer rows an ``earlier`` run recorded and this run
    found again instead of hashing them.
    """
    key = {"host": run.host_id, "root": str(run.host.root)}
    where = "WHERE host = :host AND root = :root"
    layers = {row["v1_id"]: row for row in _rows(url, f"SELECT * FROM layers {where}", **key)}
    images = _rows(url, f"SELECT * FROM images {where}", **key)
    containers = _rows(url, f"SELECT * FROM containers {where}", **key)

    if run.dry_run:
        # A dry run records no units (none of them is in place), yet audits the true diff IDs.
        assert layers == {} and images == [] and containers == []
        audited = {layer["v1_id"]: layer for layer in run.report["layers"]}
        for v1_id in run.host.sound:
            record = run.host.images[v1_id]
            assert (audited[v1_id]["diff_id"], audited[v1_id]["size"]) == (
                record.diff_id,
                record.size,
            )
        return
    for layer in run.report["layers"]:
        row = layers[layer["v1_id"]]
        assert (row["diff_id"], row["size"], row["source"], row["note"]) == (
            layer["diff_id"],
            layer["size"],
            layer["source"],
            layer["note"],
        )
    skipped = {image["v1_id"] for image in run.report["images"] if image["status"] != "migrated"}
    reported = {layer["v1_id"] for layer in run.report["layers"]}
    assert set(layers) - reported <= skipped  # layers hashed for images skipped later
    assert {row["run_id"] for row in layers.values()} <= {run_id, earlier}
    hashed_now = [row["bytes_hashed"] for row in layers.values() if row["run_id"] == run_id]
    assert sum(hashed_now) == run.report["totals"]["bytes_hashed"]
    # The builder's own diff IDs for every image it left sound.
    for v1_id in run.host.sound:
        record = run.host.images[v1_id]
        assert (layers[v1_id]["diff_id"], layers[v1_id]["size"]) == (record.diff_id, record.size)

    assert sorted(
        (r["v1_id"], r["image_id"], r["state"], r["reason"], r["tags"]) for r in images
    ) == sorted(
        (i["v1_id"], i["image_id"], i["status"], i["reason"], " ".join(i["tags"]))
        for i in run.report["images"]
    )
    assert sorted((r["container_id"], r["state"], r["reason"]) for r in containers) == sorted(
        (c["id"], c["status"], c["reason"]) for c in run.report["containers"]
    )
    assert {r["run_id"] for r in images + containers} == {run_id}


def test_status_of_one_host_reads_the_shared_ledger(fleet: Fleet) -> None:
    run = fleet.hosts["db-01"]
    result = _status(
        "--root", str(run.host.root), "--ledger", fleet.url, "--host-id", "db-01", "--json"
    )
    document = json.loads(result.stdout)
    skipped = [image["v1_id"] for image in run.report["images"] if image["status"] != "migrated"]
    assert (document["migrated"], sorted(document["remaining"])) == (
        run.report["totals"]["migrated"],
        sorted(skipped),
    )
    assert [r["host"] for r in document["runs"]] == ["db-01"]


def _start(host_id: str, host: Host, url: str, tmp: Path, *options: str) -> Popen[str]:
    """A ``graph-migrate run`` process for one host, reporting to ``url``."""
    command = ["run", "--root", str(host.root), "--ledger", url, "--host-id", host_id]
    return Popen(
        _graph_migrate(*command, "--json", "-q", *options),
        stdout=PIPE,
        stderr=PIPE,
        text=True,
        env=_environment(tmp),
    )


def _run(host_id: str, host: Host, url: str, tmp: Path, *options: str) -> HostRun:
    """One ``graph-migrate run`` process, to its end."""
    started = time.monotonic()
    process = _start(host_id, host, url, tmp, "--jobs", "1", *options)
    out, err = process.communicate(timeout=300)
    assert process.returncode in (0, 1), err
    report = json.loads(out)
    return HostRun(host_id, host, options, process.returncode, report, time.monotonic() - started)


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``root``: relative path -> (sha256, permission bits)."""
    return {
        str(path.relative_to(root)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mode & 0o7777,
        )
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def _database(url: str) -> str:
    return url.split("@/", 1)[1].split("?", 1)[0]


def test_hosts_never_wait_for_each_other_beyond_a_row(
    server: Postgres, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A host stuck mid-transaction, holding its rows and the schema lock, blocks no other."""
    import psycopg

    url = _new_ledger("postgresql", request, tmp_path)
    Ledger(url, "slow-01").close()
    stuck = psycopg.connect(host=str(server.socket_dir), user="gm", dbname=_database(url))
    try:
        stuck.execute("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(b"gmledger", "big"),))
        stuck.execute("SELECT * FROM schema_version FOR UPDATE")
        stuck.execute(
            "INSERT INTO runs (host, root, driver, mode, pid, started_at, outcome,"
            " images_migrated, images_skipped, bytes_hashed, message)"
            " VALUES ('slow-01', '/var/lib/docker', 'vfs', 'run', 1, now(), 'running', 0, 0, 0, '')"
        )
        stuck.execute(
            "INSERT INTO layers (host, root, v1_id, fingerprint, diff_id, size, source,"
            " tar_split_path, bytes_hashed, seconds, note, run_id, updated_at)"
            " VALUES ('slow-01', '/var/lib/docker', %s, '', '', 0, '', '', 0, 0, '', 1, now())",
            ("a" * 64,),
        )
        # Any lock wait longer than 2 s makes the other host fail instead of waiting.
        impatient = url + "&options=-c%20lock_timeout%3D2000"
        host = build_host(scenario("sample"), tmp_path / "fast", driver="vfs")
        fast = _run("fast-01", host, impatient, tmp_path)
        listed = _status("--all-hosts", "--ledger", impatient, "--json")
    finally:
        stuck.rollback()
        stuck.close()
    assert fast.exit_code == 0
    assert [entry["host"] for entry in json.loads(listed.stdout)["hosts"]] == ["fast-01"]
    (run,) = _rows(url, "SELECT id FROM runs")
    _check_unit_rows(url, fast, run["id"])


# On the third layer the host records, its database session stalls in a trigger, so the test
# can cut the connection at a known point of the run.
STALL = """
CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM layers WHERE host = NEW.host) >= 2 THEN
        PERFORM pg_sleep(120);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER stall BEFORE INSERT ON layers FOR EACH ROW EXECUTE FUNCTION stall();
"""


def _stalled_backend(server: Postgres, host_id: str, process: Popen[str]) -> int:
    query = (
        "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        f" AND application_name = 'graph-migrate {host_id}'"
    )
    deadline = time.monotonic() + 120
    while not (found := server.execute(query)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its third layer"
        time.sleep(0.05)
    return int(found[0][0])  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("backend", "cut"),
    [
        ("postgresql", "terminate-backend"),
        ("postgresql", "crash-server"),
        ("sqlite", "kill-process"),
    ],
)
def test_a_run_cut_off_from_its_ledger_fails_cleanly_and_the_next_resumes(
    backend: str, cut: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = _new_ledger(backend, request, tmp_path)
    host = build_host(scenario("sample"), tmp_path / "lost", driver="vfs")
    twin = _run("twin", build_host(scenario("sample"), tmp_path / "twin", driver="vfs"),
                f"sqlite:///{tmp_path}/twin.db", tmp_path)  # fmt: skip
    Ledger(url, "setup").close()
    env = _environment(tmp_path)
    if cut == "kill-process":
        env["GRAPH_MIGRATE_CRASH_AT"] = "layer-recorded:2"
    else:
        server: Postgres = request.getfixturevalue("server")
        server.execute(STALL, _database(url))
    first = Popen(
        _graph_migrate("run", "--root", str(host.root), "--ledger", url, "--host-id", "lost-01",
                       "--jobs", "1", "-q"),
        stdout=PIPE, stderr=PIPE, text=True, env=env,
    )  # fmt: skip

    # Cut it off.
    if cut == "terminate-backend":
        server.execute(f"SELECT pg_terminate_backend({_stalled_backend(server, 'lost-01', first)})")
    elif cut == "crash-server":
        _stalled_backend(server, "lost-01", first)
        server.crash()
    _, err = first.communicate(timeout=120)
    if cut == "kill-process":
        assert first.returncode == -9
    else:
        assert first.returncode == 2
        assert err.startswith(f"graph-migrate: ledger {url}: connection lost: "), err
        assert err.count("\n") == 1 and "Traceback" not in err
    if cut == "crash-server":
        server.start()
    if cut != "kill-process":
        server.execute("DROP TRIGGER stall ON layers", _database(url))

    # The next run resumes: what was recorded is not hashed again, the bytes are the same.
    second = _run("lost-01", host, url, tmp_path)
    runs = _rows(url, "SELECT id, outcome, message FROM runs WHERE host = 'lost-01' ORDER BY id")
    assert [run["outcome"] for run in runs] == [
        "failed" if cut == "terminate-backend" else "interrupted",
        "ok",
    ]
    if cut == "terminate-backend":  # the server stayed up: the run recorded why it failed
        assert "graph-migrate: " + runs[0]["message"] == err.strip()
    recorded_before = _rows(url, "SELECT v1_id FROM layers WHERE run_id = :id", id=runs[0]["id"])
    assert len(recorded_before) == 2
    assert 0 < second.report["totals"]["bytes_hashed"] < twin.report["totals"]["bytes_hashed"]
    _check_unit_rows(url, second, runs[1]["id"], earlier=runs[0]["id"])
    assert second.report["images"] == twin.report["images"]
    assert _tree(host.root) == _tree(twin.host.root)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_ledger_that_missed_the_migration_is_resynced_from_the_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The host migrated while reporting elsewhere; the new ledger learns it from the store."""
    host = build_host(scenario("crc-mismatch"), tmp_path / "h", driver="overlay")
    first = _run("web-09", host, f"sqlite:///{tmp_path}/local.db", tmp_path)
    url = _new_ledger(backend, request, tmp_path)
    second = _run("web-09", host, url, tmp_path)

    assert (second.exit_code, second.report["layers"]) == (first.exit_code, first.report["layers"])
    (run,) = _rows(url, "SELECT id FROM runs")
    _check_unit_rows(url, second, run["id"])
    # Layers replayed from their tar-split are taken from the store; regenerated ones (whose
    # reason the store does not keep) are regenerated again.
    rows = _rows(url, "SELECT source, bytes_hashed FROM layers")
    assert {row["source"] for row in rows if row["bytes_hashed"] == 0} == {"tar-split"}
    assert {row["source"] for row in rows if row["bytes_hashed"] > 0} == {"regenerated"}
    assert 0 < second.report["totals"]["bytes_hashed"] < first.report["totals"]["bytes_hashed"]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_hosts_creating_the_schema_at_the_same_moment_create_it_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Three rounds: in each, six hosts open the same empty ledger at the same moment."""
    urls = [_new_ledger(backend, request, tmp_path) for _ in range(3)]
    code = (
        "import os, sys, time\n"
        "from migrate.ledger import Ledger\n"
        "go, host, urls = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
        "for n, url in enumerate(urls):\n"
        "    open(f'{go}{n}.{host}', 'w').close()\n"
        "    while not os.path.exists(f'{go}{n}'):\n"
        "        time.sleep(0.001)\n"
        "    Ledger(url, host).close()\n"
    )
    go = str(tmp_path / "go")
    hosts = [f"host-{n}" for n in range(6)]
    processes = [
        Popen([sys.executable, "-c", code, go, host, *urls], stderr=PIPE, text=True)
        for host in hosts
    ]
    for n in range(len(urls)):
        while not all(os.path.exists(f"{go}{n}.{host}") for host in hosts):
            if any(process.poll() is not None for process in processes):
                break  # one failed: the assertion below shows why
            time.sleep(0.005)
        Path(f"{go}{n}").touch()
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * len(hosts), errors
    for url in urls:
        assert _rows(url, "SELECT version FROM schema_version ORDER BY version") == _EVERY_VERSION
        assert _rows(url, "SELECT count(*) AS n FROM runs") == [{"n": 0}]


def test_postgresql_url_without_a_driver_name_means_psycopg(server: Postgres) -> None:
    url = server.url().replace("postgresql+psycopg://", "postgresql://")
    ledger = Ledger(url, "web-01")
    try:
        assert ledger.engine.dialect.driver == "psycopg"
        assert ledger.fleet() == []
    finally:
        ledger.close()
