"""The checkpoint and VAE lists: what is on disk, named the way AUTOMATIC1111 names it.

A checkpoint's title is `relative/path.safetensors [abcdef0123]`, the bracket holding the first 10
hex digits of the file's SHA-256 once it is known. A hash is computed in the background when a model is
loaded (`hash_later`; not at scan time: a folder of large files would take minutes, and a scan-time pass
would compete with loading and sampling for the disk and the CPU), or on demand when something asks for a
checkpoint by a hash no listed title carries yet, and cached in cache.json.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from modules.hashing import BackgroundHasher, HashCache, HashTask, legacy_model_hash

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")
VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
VAE_MARKERS = (".vae.safetensors", ".vae.pt", ".vae.ckpt")


def natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _walk(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            if name.lower().endswith(extensions):
                found.append(Path(root) / name)
    return found


@dataclass
class CheckpointInfo:
    filename: Path
    name: str  # path relative to its folder, '/'-separated, with extension
    sha256: str | None = None
    legacy_hash: str | None = field(default=None, repr=False)
    builtin: bool = False  # the demo model shipped in the repo, listed after the user's own

    @property
    def stem(self) -> str:
        return Path(self.name).name.rsplit(".", 1)[0]

    @property
    def model_name(self) -> str:
        """A1111's `model_name`: relative path without extension, '/' replaced by '_'."""
        return self.name.rsplit(".", 1)[0].replace("/", "_")

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.sha256 else self.name

    @property
    def short_title(self) -> str:
        return f"{self.stem} [{self.shorthash}]" if self.sha256 else self.stem

    def aliases(self) -> list[str]:
        names = [self.title, self.name, self.model_name, self.stem, str(self.filename)]
        if self.sha256:
            names += [self.sha256, self.shorthash, f"{self.name} [{self.shorthash}]",
                      f"{self.stem} [{self.shorthash}]"]
        if self.legacy_hash:
            names += [self.legacy_hash, f"{self.name} [{self.legacy_hash}]"]
        return names


HASH_QUERY = re.compile(r"[0-9a-fA-F]{10}|[0-9a-fA-F]{64}")  # a short hash (infotexts' `Model hash`) or a full one


class CheckpointRegistry:
    def __init__(self, folders: tuple[Path, ...], hashes: HashCache, extra_files: tuple[Path, ...] = (),
                 builtin_files: tuple[Path, ...] = (), hasher: BackgroundHasher | None = None):
        self.folders = folders
        self.extra_files = extra_files
        self.builtin_files = builtin_files
        self.hashes = hashes
        self.hasher = hasher or BackgroundHasher(hashes)  # stop it with the engine (bootstrap wires it)
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []
        self.refresh()

    def refresh(self) -> list[CheckpointInfo]:
        """Rescan the folders. Known hashes are filled from the cache without reading any file."""
        items: dict[Path, CheckpointInfo] = {}
        for folder in self.folders:
            for path in _walk(folder, CHECKPOINT_EXTENSIONS):
                if path.name.lower().endswith(VAE_MARKERS):
                    continue
                resolved = path.resolve()
                if resolved in items:
                    continue
                rel = path.relative_to(folder).as_posix()
                items[resolved] = CheckpointInfo(filename=resolved, name=rel)
        for path in self.extra_files:
            resolved = Path(path).resolve()
            if resolved not in items and resolved.is_file():
                items[resolved] = CheckpointInfo(filename=resolved, name=resolved.name)
        for path in self.builtin_files:
            resolved = Path(path).resolve()
            if resolved not in items and resolved.is_file():
                items[resolved] = CheckpointInfo(filename=resolved, name=f"builtin/{resolved.name}", builtin=True)
        for info in items.values():
            info.sha256 = self.hashes.cached_sha256(info.filename)
        # The user's own checkpoints first: the first entry is the default when nothing is selected.
        ordered = sorted(items.values(), key=lambda i: (i.builtin, natural_key(i.name)))
        with self._lock:
            self._items = ordered
        return list(ordered)

    def list(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def hash_later(self, info: CheckpointInfo) -> HashTask:
        """The checkpoint's hash, computed in the background unless known. When it is, `info` and the listed
        entry for the same file gain it (and so their titles their `[hash]`)."""
        if info.sha256:
            return HashTask.finished(info.filename, info.sha256)

        def known(sha256: str) -> None:
            info.sha256 = sha256
            for item in self.list():
                if item.filename == info.filename and not item.sha256:
                    item.sha256 = sha256

        return self.hasher.submit(info.filename, known)

    def ensure_hash(self, info: CheckpointInfo) -> str:
        """The checkpoint's hash now: from the cache, from the background hasher (waiting for it), else read
        here (OSError when the file cannot be read)."""
        if not info.sha256:
            info.sha256 = self.hash_later(info).wait() or self.hashes.sha256(info.filename)
        return info.sha256

    def _find_by_hash(self, query: str, items: list[CheckpointInfo]) -> CheckpointInfo | None:
        """A checkpoint whose hash is `query` (10 or 64 hex), hashing the ones not hashed yet (from the cache
        when it knows them, else read: seconds per GB) until one matches."""
        query = query.lower()
        for info in items:
            if info.sha256 is None:
                try:
                    self.ensure_hash(info)
                except OSError:
                    continue
            if query in (info.sha256, info.shorthash):
                return info
        return None

    def find(self, query: str) -> CheckpointInfo | None:
        """Resolve a title, name, stem, model name, path or hash the way A1111's lookup does:
        exact matches first, then the shortest title containing the query."""
        query = (query or "").strip()
        if not query:
            return None
        items = self.list()
        for info in items:
            if query in info.aliases():
                return info
        if HASH_QUERY.fullmatch(query) and any(info.sha256 is None for info in items):
            found = self._find_by_hash(query, items)
            if found is not None:
                return found
        # Old infotexts carry the 8-hex legacy hash; computing it reads only 64 KiB per file.
        if re.fullmatch(r"[0-9a-fA-F]{8}", query):
            for info in items:
                if info.legacy_hash is None:
                    info.legacy_hash = legacy_model_hash(info.filename)
                if info.legacy_hash == query.lower():
                    return info
        stripped = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", query)
        for q in dict.fromkeys([query, stripped]):
            matches = [i for i in items if q in i.title]
            if matches:
                return min(matches, key=lambda i: len(i.title))
        return None


@dataclass(frozen=True)
class VaeInfo:
    filename: Path
    name: str  # file name, as A1111's dropdown shows it


class VaeRegistry:
    """VAE files: models/VAE (and --vae-dir) plus `*.vae.*` files beside checkpoints."""

    def __init__(self, vae_folders: tuple[Path, ...], checkpoint_folders: tuple[Path, ...]):
        self.vae_folders = vae_folders
        self.checkpoint_folders = checkpoint_folders
        self._items: list[VaeInfo] = []
        self.refresh()

    def refresh(self) -> list[VaeInfo]:
        found: dict[Path, VaeInfo] = {}
        for folder in self.vae_folders:
            for path in _walk(folder, VAE_EXTENSIONS):
                found.setdefault(path.resolve(), VaeInfo(path.resolve(), path.name))
        for folder in self.checkpoint_folders:
            for path in _walk(folder, VAE_MARKERS):
                found.setdefault(path.resolve(), VaeInfo(path.resolve(), path.name))
        self._items = sorted(found.values(), key=lambda v: natural_key(v.name))
        return list(self._items)

    def list(self) -> list[VaeInfo]:
        return list(self._items)

    def find(self, name: str) -> VaeInfo | None:
        for v in self._items:
            if name in (v.name, str(v.filename), v.name.rsplit(".", 1)[0]):
                return v
        return None

    @staticmethod
    def beside(checkpoint: Path) -> Path | None:
        """`NAME.vae.safetensors` (or .vae.pt/.vae.ckpt) next to `NAME.safetensors`."""
        base = str(checkpoint)[: -len(checkpoint.suffix)] if checkpoint.suffix else str(checkpoint)
        for marker in VAE_MARKERS:
            candidate = Path(base + marker)
            if candidate.is_file():
                return candidate
        return None
