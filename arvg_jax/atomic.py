"""Outputs written whole or not at all, with the user's permissions, replacing only arvg's own.

* Files: a temporary file in the same folder, then `os.replace` (atomic on POSIX), so a killed
  process never leaves a half-written report, shard, image or batch file.
* Directories (`write_dir`): a sibling temporary directory filled, marked and renamed into place;
  a replaced directory is renamed aside and deleted after the swap, so nothing is left beside it.
* The marker: every directory arvg creates holds a `.arvg` file. `--overwrite` replaces, and the
  commands write into, only a directory that has it (or is empty); anything else is refused with a
  message naming the marker, so a typo in `--out` never deletes a user's folder.
* Permissions follow the umask like a plain `open` / `mkdir` (mkstemp / mkdtemp create 0600 / 0700).
* Interruption: temporaries are registered with `arvg_jax.interrupt` (deleted on Ctrl-C) and the
  final renames run inside its commit gate, so a signal either lets a write finish or rolls it back.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Callable

from arvg_jax import interrupt

TMP_PREFIX = ".tmp-"  # temporaries are named .tmp-<name>.<random>: a cleaner can find them
MARKER = ".arvg"  # in every directory arvg creates: what --overwrite may replace
# Directories written before the marker existed, recognised by their own metadata file.
_LEGACY = (("arvg.json", "arvg-jax/quantized/"), ("config.json", "arvg-jax/converted/"))


def umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        status = pathlib.Path("/proc/self/status").read_text()
        m = re.search(r"^Umask:\s*([0-7]+)", status, re.MULTILINE)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no read-only API elsewhere: set and restore at once
    os.umask(mask)
    return mask


# ---- files ----------------------------------------------------------------------------------------
def write(path: str | os.PathLike, writer: Callable[[str], None]) -> pathlib.Path:
    """Calls `writer(tmp_path)`, then renames the file onto `path`; removes it on failure.

    The file gets mode 0666 & ~umask. Returns `path`.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    with interrupt.staged(tmp, path):
        try:
            writer(tmp)
            os.chmod(tmp, 0o666 & ~umask())
            with interrupt.commit(path):
                os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Writes a binary file atomically."""

    def writer(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return write(path, writer)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes a text file atomically."""
    return write_bytes(path, text.encode())


# ---- directories ----------------------------------------------------------------------------------
def is_arvg_dir(path: str | os.PathLike) -> bool:
    """True for a directory arvg wrote: it holds the marker (or an older arvg metadata file)."""
    path = pathlib.Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / MARKER).is_file():
        return True
    for name, tag in _LEGACY:
        try:
            if json.loads((path / name).read_text()).get("format", "").startswith(tag):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def _refusal(path: pathlib.Path) -> str:
    what = "a directory" if path.is_dir() else "a file"
    return (
        f"{path} is {what} arvg did not write (no {MARKER} marker file in it): --overwrite "
        "replaces only arvg's outputs; delete it yourself or choose another --out"
    )


def check_replaceable(path: str | os.PathLike, overwrite: bool, *, ours=is_arvg_dir) -> None:
    """Raises FileExistsError unless `path` is free, or `overwrite` and `ours(path)`.

    Args:
      ours: recognises an output arvg wrote at `path` (default: a marked directory; a file output
        passes its own test, e.g. a converted .safetensors file's format tag).
    """
    path = pathlib.Path(path)
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
    if not ours(path):
        raise FileExistsError(_refusal(path))


def _mark(directory: pathlib.Path) -> None:
    marker = directory / MARKER
    if not marker.exists():
        marker.write_text("written by arvg-jax: `--overwrite` may replace this directory\n")
        os.chmod(marker, 0o666 & ~umask())


def write_dir(
    path: str | os.PathLike,
    writer: Callable[[pathlib.Path], None],
    *,
    overwrite: bool = False,
    ours: Callable[[pathlib.Path], bool] = is_arvg_dir,
) -> pathlib.Path:
    """Fills a temporary directory with `writer(tmp)`, marks it and renames it onto `path`.

    Raises:
      FileExistsError: `path` exists and is not replaceable (`check_replaceable`).
    """
    path = pathlib.Path(path)
    check_replaceable(path, overwrite, ours=ours)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent))
    trash = None
    with interrupt.staged(tmp, path):
        try:
            os.chmod(tmp, 0o777 & ~umask())
            writer(tmp)
            _mark(tmp)
            with interrupt.commit(path):
                if os.path.lexists(path):
                    check_replaceable(path, overwrite, ours=ours)  # it may have appeared since
                    trash = tmp.with_name(tmp.name + ".old")
                    os.replace(path, trash)
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if trash is not None:
        with interrupt.staged(trash, path, trash=True):
            if trash.is_dir() and not trash.is_symlink():
                shutil.rmtree(trash)
            else:
                trash.unlink()
    return path


def check_output_dir(path: str | os.PathLike) -> pathlib.Path:
    """Raises FileExistsError unless `path` is free, an empty directory or one arvg wrote (a
    command that writes files into a directory checks this before its work)."""
    path = pathlib.Path(path)
    if os.path.lexists(path) and not (
        path.is_dir() and (is_arvg_dir(path) or not any(path.iterdir()))
    ):
        raise FileExistsError(
            f"{path} is {'a directory' if path.is_dir() else 'a file'} arvg did not write (no "
            f"{MARKER} marker file in it): arvg writes only into new, empty or its own "
            "directories; choose another --out"
        )
    return path


def output_dir(path: str | os.PathLike) -> pathlib.Path:
    """`check_output_dir`, then creates the directory (umask mode) with the marker in it."""
    path = check_output_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    _mark(path)
    return path
