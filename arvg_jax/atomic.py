"""Files written whole or not at all: a temporary file in the same folder, then `os.replace`
(atomic on POSIX), so a killed process never leaves a half-written report, shard or batch file."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable

TMP_PREFIX = ".tmp-"  # temporaries are named .tmp-<name>.<random>: a cleaner can find them


def write(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Calls `writer(tmp_path)`, then renames the file onto `path`; removes it on failure."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        umask = os.umask(0)  # mkstemp makes the file 0600; give it the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes a text file atomically."""

    def writer(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    write(path, writer)
