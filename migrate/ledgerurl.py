"""Where the ledger is, known without importing SQLAlchemy (the costliest import of a run)."""

from __future__ import annotations

import os
import socket


def default_url() -> str:
    """The default ledger: SQLite under the XDG state directory."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return f"sqlite:///{os.path.join(state, 'graph-migrate', 'ledger.db')}"


def default_host_id() -> str:
    return socket.gethostname()


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL, None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").partition("?")[0]
    return path if path and path != ":memory:" else None
