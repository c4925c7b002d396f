"""Secrets kept in files of the data folder: made once, at random, readable by their owner only."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def private_file(path: Path, make: Callable[[], str]) -> Path:
    """`path`, made with `make()` (mode 0600, in a folder of mode 0700) when it does not exist.

    Written to a temporary file and linked into place, so that two processes starting at once end
    up with the same content and nobody reads a half-written one.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(make() + "\n")
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users: chmod 600 it (it holds a secret)", path)
    return path
