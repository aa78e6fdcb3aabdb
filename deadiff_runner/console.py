"""How deadiff-run speaks and exits: one line on stderr, prefixed with its name, and the exit statuses.

Shared by the command line, the local run and the server run (remote.py), so every message and exit code
reads the same whichever path ran the jobs.
"""

from __future__ import annotations

import sys

EXIT_FAILED = 1
EXIT_MISSING = 2
EXIT_USAGE = 2


def fail(message: str, code: int) -> int:
    print(f"deadiff-run: {message}", file=sys.stderr)
    return code


def say(message: str) -> None:
    print(f"deadiff-run: {message}", file=sys.stderr, flush=True)
