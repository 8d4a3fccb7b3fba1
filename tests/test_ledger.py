"""The ledger and the root lock, on SQLite files in temporary directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.digest import DiffID
from migrate.layers import LayerJob, LayerResult
from migrate.ledger import Ledger, LedgerError, SchemaVersion, default_url
from migrate.lock import LockedError, RootLock


def _job(root: Path, v1_id: str = "a" * 64) -> LayerJob:
    (root / "graph" / v1_id).mkdir(parents=True, exist_ok=True)
    (root / "graph" / v1_id / "json").write_text("{}")
    return LayerJob(str(root), "vfs", v1_id, "", str(root / "regen"))


def test_default_ledger_lives_under_xdg_state_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert default_url() == "sqlite:////srv/state/graph-migrate/ledger.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/op")
    assert default_url() == "sqlite:////home/op/.local/state/graph-migrate/ledger.db"


def test_layer_results_survive_a_reopen_and_expire_when_legacy_data_changes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    job = _job(tmp_path)
    tar_split = tmp_path / "tar-data.json.gz"
    tar_split.write_bytes(b"x")
    result = LayerResult(job.v1_id, DiffID.of(b"x"), 1, "tar-split", str(tar_split), 1024, 0.1)

    ledger = Ledger(url, "host-a")
    run = ledger.start_run(str(tmp_path), "vfs", "run")
    ledger.layer_cache(str(tmp_path), run).layer_done(job, result)
    ledger.close()

    reopened = Ledger(url, "host-a")
    assert reopened.layer_cache(str(tmp_path), run).cached_layer(job) == result
    assert Ledger(url, "host-b").layer_cache(str(tmp_path), run).cached_layer(job) is None

    (tmp_path / "graph" / job.v1_id / "json").write_text('{"changed": true}')
    assert reopened.layer_cache(str(tmp_path), run).cached_layer(job) is None


def test_an_unfinished_run_is_marked_interrupted_by_the_next(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db", "h")
    first = ledger.start_run("/r", "vfs", "run")
    second = ledger.start_run("/r", "vfs", "run")
    ledger.end_run(second, "ok", migrated=2, skipped=0, hashed=10, message="")
    outcomes = {run.id: run.outcome for run in ledger.runs("/r")}
    assert outcomes == {first: "interrupted", second: "ok"}


def test_schema_version_is_recorded_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/l.db"
    Ledger(url).close()
    ledger = Ledger(url)
    with ledger.session() as session:
        assert [row.version for row in session.query(SchemaVersion)] == [1]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/l.db"
    ledger = Ledger(url)
    with ledger.session() as session:
        session.add(SchemaVersion(version=99))
    with pytest.raises(LedgerError, match="schema version 99"):
        Ledger(url)


def test_an_unusable_ledger_url_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LedgerError, match="ledger sqlite:///"):
        Ledger(f"sqlite:///{tmp_path}/file/ledger.db")


def test_second_lock_names_the_holder_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    with RootLock(str(tmp_path)), pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        RootLock(str(tmp_path)).__enter__()
    assert not (tmp_path / ".graph-migrate.lock").exists()

    # A holder killed with SIGKILL leaves its file behind, but the kernel dropped its lock.
    code = (
        "import os, signal, sys\n"
        "from migrate.lock import RootLock\n"
        "RootLock(sys.argv[1]).__enter__()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    assert (tmp_path / ".graph-migrate.lock").exists()
    with RootLock(str(tmp_path)):
        pass


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_fresh_ledger_is_opened_late_and_records_the_whole_run(tmp_path: Path, jobs: int) -> None:
    from fixtures import build_host, scenario
    from migrate.api import LedgerOpener, open_root, run_migration

    host = build_host(scenario("sample"), tmp_path / "docker", driver="vfs")
    url = f"sqlite:///{tmp_path}/state/ledger.db"
    opener = LedgerOpener(url, "host-a")
    assert opener.fresh

    first = run_migration(open_root(str(host.root)), dry_run=True, jobs=jobs, ledger=opener)
    opener.close()
    again = LedgerOpener(url, "host-a")
    assert not again.fresh
    second = run_migration(open_root(str(host.root)), dry_run=True, jobs=jobs, ledger=again)

    ledger = again.open()
    runs = ledger.runs(str(host.root))
    assert [(run.mode, run.outcome) for run in runs] == [("dry-run", "ok"), ("dry-run", "ok")]
    assert ledger.layer_count(str(host.root)) == len(host.images)
    assert first.bytes_hashed > 0
    assert second.bytes_hashed == 0  # every layer came from the ledger the first run wrote
    again.close()
