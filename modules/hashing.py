"""File hashes as AUTOMATIC1111 shows them, computed once and cached in cache.json.

The cache is keyed by absolute path and remembers the file's size and modification time, so an
edited or replaced file is hashed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from modules import fileio

log = logging.getLogger(__name__)

BLOCK = 1 << 20


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
    return h.hexdigest()


def legacy_model_hash(path: Path) -> str:
    """A1111's old 8-hex "model hash": SHA-256 of 64 KiB read at offset 1 MiB. Still found in old infotexts."""
    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError:
        return "NOFILE"


class HashCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        fileio.remove_stale_temps(self.path)  # left by a write a kill cut short
        self._lock = threading.Lock()
        try:
            data = fileio.read_json(self.path) or {}
        except ValueError as e:
            log.warning("%s; starting with an empty hash cache", e)
            data = {}
        self._entries: dict[str, dict] = data.get("hashes", {}) if isinstance(data, dict) else {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, float]:
        st = os.stat(path)
        return st.st_size, st.st_mtime

    def cached_sha256(self, path: Path, kind: str = "") -> str | None:
        """The cached hash if the file is unchanged since it was hashed, else None. Never reads the file."""
        path = Path(path).resolve()
        entry = self._entries.get(f"{path}#{kind}" if kind else str(path))
        if not entry:
            return None
        try:
            size, mtime = self._stamp(path)
        except OSError:
            return None
        if entry.get("size") == size and entry.get("mtime") == mtime:
            return entry.get("sha256")
        return None

    def sha256(self, path: Path, kind: str = "", compute=sha256_of_file) -> str:
        """The file's SHA-256, from the cache or computed (and then cached). `kind` names another hash
        of the same file (e.g. "addnet", LoRA's hash without the header) computed by `compute`."""
        path = Path(path).resolve()
        key = f"{path}#{kind}" if kind else str(path)
        entry = self._entries.get(key)
        size, mtime = self._stamp(path)
        if entry and entry.get("size") == size and entry.get("mtime") == mtime and entry.get("sha256"):
            return entry["sha256"]
        log.info("Calculating sha256%s for %s", f" ({kind})" if kind else "", path)
        digest = compute(path)
        with self._lock:
            self._entries[key] = {"size": size, "mtime": mtime, "sha256": digest}
            fileio.atomic_write_json(self.path, {"hashes": self._entries})
        return digest
