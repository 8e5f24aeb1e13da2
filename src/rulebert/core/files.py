"""Atomic file output: write to a temp file beside the target, then rename it into place.

A reader (or a crash) therefore sees either the old file or the whole new one, never a half-written one.
Nothing here changes process-wide state (the umask is read, never set; the csv field limit is restored).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rulebert.core.errors import RulebertError

if TYPE_CHECKING:
    import pandas as pd


def current_umask() -> int:
    """The process umask, read from ``/proc/self/status`` (Linux); 0o022 where it cannot be read.

    ``os.umask`` can only be read by setting it, which would race with other threads creating files."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return 0o022


def create_private(path: str | os.PathLike) -> None:
    """Create ``path`` (a file) readable by its owner only, if it does not exist yet: SQLite then gives its
    journal files the same mode."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def tighten(path: str | os.PathLike, mode: int) -> int | None:
    """Set an existing ``path`` to ``mode`` if group or others have any access to it; returns the looser
    mode it had (for the caller's warning), else None. ``OSError`` where it cannot (another user's file)."""
    old = stat.S_IMODE(os.stat(path).st_mode)
    if not old & 0o077:
        return None
    os.chmod(path, mode)
    return old


def _final_mode(path: Path) -> int:
    """A replaced file keeps its permissions (a 0600 output stays 0600); a new one gets the usual ones."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def _missing_folders(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def check_output_place(path: str | os.PathLike) -> None:
    """Fail now, before any work, if ``path`` cannot be written: it is a folder, a folder on its way is a
    file, or the nearest existing folder refuses a new file (read-only, ``/proc``). Creates nothing that
    stays: a probe file is made and removed; missing folders are left for :func:`atomic_write`."""
    path = Path(path)
    if path.is_dir():
        raise RulebertError(f"{path}: is a folder; name the output file")
    missing = _missing_folders(path.parent)
    existing = missing[-1].parent if missing else path.parent
    if not existing.is_dir():
        raise RulebertError(f"{path}: cannot be written: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, err.strerror, str(path)) from None  # the output, not the probe
        raise RulebertError(f"{path}: cannot be written there ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file in ``path``'s folder; on success rename it to ``path``, on error delete it (and
    the folders it created for it: a failed run leaves nothing behind)."""
    path = Path(path)
    created = _missing_folders(path.parent)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, _final_mode(path))  # mkstemp makes 0600
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        for folder in created:  # deepest first; one someone else filled meanwhile stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, OSError) and (tmp is None or err.filename in (None, tmp)):
            # a full disk or a read-only folder: name the output, never the temp file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (weights and data files need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.write("\n")


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` as CSV (no index), atomically: no half-written file on failure."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)
    return Path(path)


_CSV_LIMIT_LOCK = threading.Lock()
CSV_FIELD_LIMIT = 1 << 30
"""The largest CSV cell every reader takes (1 GiB; the csv module's default, 128 KiB, refuses long posts):
predict, train and score alike, and what a JSON Lines line holds anyway."""


@contextmanager
def csv_field_limit(limit: int) -> Iterator[None]:
    """Raise the ``csv`` module's field size limit (default 128 KiB) for the duration of a read only.

    The limit is process-wide in the standard library; it is restored afterwards, under a lock so that two
    threads reading CSVs do not restore each other's value half-way."""
    with _CSV_LIMIT_LOCK:
        previous = csv.field_size_limit()
        csv.field_size_limit(max(previous, limit))
        try:
            yield
        finally:
            csv.field_size_limit(previous)
