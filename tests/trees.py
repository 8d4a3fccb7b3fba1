"""Helpers for the recovery, dry-run and command tests: whole-tree snapshots and real runs."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures import Host, build_host, scenario
from fixtures.model import HostSpec

# One entry per path: what a change to the legacy root could touch, except the access time.
Metadata = tuple[Any, ...]


def metadata_snapshot(root: Path) -> dict[str, Metadata]:
    """Every path below ``root`` with its type, bytes, mode, owner, times and link count."""
    entries: dict[str, Metadata] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        entries[str(path.relative_to(root))] = (
            stat.S_IFMT(st.st_mode),
            _content(path, st),
            st.st_mode & 0o7777,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_nlink,
            st.st_ino,
        )
    return entries


def store_snapshot(root: Path) -> dict[str, tuple[int, str, int]]:
    """Every path below ``root`` with its type, bytes (or link target) and mode; no times."""
    entries: dict[str, tuple[int, str, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        relative = str(path.relative_to(root))
        entries[relative] = (stat.S_IFMT(st.st_mode), _content(path, st), st.st_mode & 0o7777)
    return entries


def _content(path: Path, st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path)
    if stat.S_ISREG(st.st_mode):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return ""


def differences(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """The paths that are missing, extra or different, one line each, for assertion messages."""
    lines = [f"missing {p}" for p in sorted(set(expected) - set(actual))]
    lines += [f"extra {p}" for p in sorted(set(actual) - set(expected))]
    lines += [
        f"differs {p}" for p in sorted(set(actual) & set(expected)) if actual[p] != expected[p]
    ]
    return lines


def build(dest: Path, name: str = "sample", spec: HostSpec | None = None) -> Host:
    """A fresh legacy host of scenario ``name`` (or ``spec``) in ``dest``."""
    return build_host(spec or scenario(name), dest)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a real ``graph-migrate`` process ended."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def command(*args: str) -> list[str]:
    """The command line of the installed ``graph-migrate``, run by this interpreter."""
    return [sys.executable, "-m", "migrate", *args]


def graph_migrate(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> Outcome:
    """Run the real ``graph-migrate`` process to its end (or its death) and capture it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPH_MIGRATE_")}
    full_env.update(env or {})
    done = subprocess.run(
        command(*args), capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def run_args(root: Path, ledger: Path, *extra: str, jobs: int = 1) -> list[str]:
    """``run`` options for ``root`` with a ledger of its own (one hashing process by default)."""
    return ["run", "--root", str(root), "--ledger", f"sqlite:///{ledger}", f"--jobs={jobs}", *extra]
