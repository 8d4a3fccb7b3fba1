"""Shared test helpers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def spec_vectors(name: str) -> Path:
    """The spec's vector directory ``name``, in the ``shared/`` copy beside this checkout.

    ``GRAPH_MIGRATE_SHARED`` names that copy; otherwise the nearest ``shared/`` beside an
    ancestor of the checkout is taken, which covers a clone beside it and a worktree below it.
    """
    tail = Path("spec") / "vectors" / name
    configured = os.environ.get("GRAPH_MIGRATE_SHARED")
    if configured:
        return Path(configured) / tail
    checkout = Path(__file__).resolve().parents[1]
    for ancestor in checkout.parents:
        if (ancestor / "shared" / tail).is_dir():
            return ancestor / "shared" / tail
    return checkout.parent / "shared" / tail


def require_dir(path: Path, what: str) -> None:
    """Fail under CI, skip elsewhere, when the directory ``path`` holding ``what`` is missing."""
    if not path.is_dir():
        message = f"{what} not found at {path}: set GRAPH_MIGRATE_SHARED to the shared/ folder"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def require_tool(name: str, package: str) -> str:
    """Path of the executable ``name``; fail under CI, skip elsewhere, when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install the Debian package {package}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _private_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the default ledger of commands run without ``--ledger`` out of the user's home."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
