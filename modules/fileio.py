"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, IO

STALE_SECONDS = 10  # a temporary file this old is no write in progress (one takes milliseconds) but a leftover


def _umask_by_setting() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it: done once, at import (start-up)
    os.umask(mask)
    return mask


_UMASK_AT_START = _umask_by_setting()


def new_file_mode() -> int:
    """What open() gives a new file under the process's umask (mkstemp's files are always 0600). Linux tells
    the umask without changing it (other threads may be creating files); elsewhere it is the one at start."""
    mask = _UMASK_AT_START
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                mask = int(line.split()[1], 8)
                break
    except (OSError, ValueError, IndexError):
        pass
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through `write(fileobj)` into a temporary file beside `path`, then rename it over `path`.
    (The temporary name starts with only part of the name, so it fits when the name is as long as can be.)
    The file gets the permissions a plain write would give it: those of the file it replaces, or for a new
    file the umask's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:64]}."


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temporary files a killed atomic write of `path` left beside it (older than STALE_SECONDS);
    the ones removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    now = time.time()
    for tmp in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None if the file is missing. A corrupt file raises ValueError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or delete it") from e
