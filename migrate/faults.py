"""Crash points for testing recovery: the process kills itself at a named step.

``GRAPH_MIGRATE_CRASH_AT=step:n`` makes the n-th arrival (1-based) at ``step`` end the process
with SIGKILL, exactly as a power cut or ``kill -9`` would at that point. Unset, a checkpoint costs
one dictionary lookup. ``GRAPH_MIGRATE_CRASH_TRACE=FILE`` appends the name of every step reached
to FILE, one a line, so a test can count the arrivals of an uninterrupted run and choose where to
crash the next one.
"""

from __future__ import annotations

import os
import signal

_SETTING = os.environ.get("GRAPH_MIGRATE_CRASH_AT", "")
_STEP, _, _COUNT = _SETTING.partition(":")
_remaining = int(_COUNT or 1) if _SETTING else 0
_TRACE = os.environ.get("GRAPH_MIGRATE_CRASH_TRACE", "")


def checkpoint(step: str) -> None:
    """Die here if the environment asked for a crash at this arrival of ``step``."""
    global _remaining  # noqa: PLW0603 - one process-wide countdown is the whole point
    if _TRACE:
        with open(_TRACE, "a", encoding="utf-8") as trace:
            trace.write(f"{step}\n")
    if not _remaining or step != _STEP:
        return
    _remaining -= 1
    if _remaining == 0:
        os.kill(os.getpid(), signal.SIGKILL)
