"""File hashes as AUTOMATIC1111 shows them, computed once and cached in cache.json.

The cache is keyed by absolute path and remembers the file's size and modification time, so an
edited or replaced file is hashed again. It is safe to use from several threads (the job worker reads
it while the background hasher writes it).

`BackgroundHasher` computes checkpoint hashes off the critical path: a model loads without waiting for
its file's SHA-256 (seconds per GB), which one background thread computes, file after file, while the
first job samples. Whatever needs the hash (an infotext's `Model hash`, finding a checkpoint by hash)
waits for it then, usually not at all.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from modules import fileio

log = logging.getLogger(__name__)

BLOCK = 1 << 20
PROGRESS_AFTER_S = 1.0  # a console bar appears for a hash that takes longer than this


def sha256_of_file(path: Path, on_read: Callable[[int], None] | None = None) -> str:
    """The file's SHA-256; `on_read(n)` is called after each block of n bytes (a progress bar; it may raise
    to stop the hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
            if on_read is not None:
                on_read(len(chunk))
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
        self._lock = threading.Lock()  # guards _entries and the file
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

    def _valid(self, key: str, size: int, mtime: float) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry.get("size") == size and entry.get("mtime") == mtime:
            return entry.get("sha256") or None
        return None

    def cached_sha256(self, path: Path, kind: str = "") -> str | None:
        """The cached hash if the file is unchanged since it was hashed, else None. Never reads the file."""
        path = Path(path).resolve()
        try:
            size, mtime = self._stamp(path)
        except OSError:
            return None
        return self._valid(f"{path}#{kind}" if kind else str(path), size, mtime)

    def sha256(self, path: Path, kind: str = "", compute=sha256_of_file,
               on_read: Callable[[int], None] | None = None) -> str:
        """The file's SHA-256, from the cache or computed (and then cached). `kind` names another hash
        of the same file (e.g. "addnet", LoRA's hash without the header) computed by `compute`. `on_read`
        (progress) is passed to `compute` when given."""
        path = Path(path).resolve()
        key = f"{path}#{kind}" if kind else str(path)
        size, mtime = self._stamp(path)
        cached = self._valid(key, size, mtime)
        if cached:
            return cached
        log.info("Calculating sha256%s for %s", f" ({kind})" if kind else "", path)
        digest = compute(path) if on_read is None else compute(path, on_read)
        with self._lock:
            self._entries[key] = {"size": size, "mtime": mtime, "sha256": digest}
            fileio.atomic_write_json(self.path, {"hashes": dict(self._entries)})
        return digest


class HashStopped(Exception):
    """The background hasher was stopped while this hash was computed or waiting."""


class HashTask:
    """One file's hash in the background: `wait()` for it, `fraction` done so far."""

    def __init__(self, path: Path, size: int = 0):
        self.path = path
        self.size = size
        self.read = 0  # bytes hashed so far
        self.sha256: str | None = None
        self.error: str | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[str], None]] = []

    @classmethod
    def finished(cls, path: Path, sha256: str | None, error: str | None = None) -> "HashTask":
        task = cls(path)
        task._finish(sha256, error)
        return task

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def fraction(self) -> float:
        return 1.0 if self.done else (self.read / self.size if self.size else 0.0)

    def wait(self, timeout: float | None = None) -> str | None:
        """The hash once computed; None if it could not be (the file went, the hasher stopped) or on timeout."""
        self._done.wait(timeout)
        return self.sha256

    def add_done_callback(self, fn: Callable[[str], None]) -> None:
        """Call `fn(sha256)` once the hash is known (at once if it is; never if it fails)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        if self.sha256:
            fn(self.sha256)

    def _finish(self, sha256: str | None, error: str | None = None) -> None:
        """Run the listeners, then say done: whoever waits for the hash also sees what the listeners did with it
        (the checkpoint's title, the selected-checkpoint setting). A listener added meanwhile runs too."""
        with self._lock:
            self.sha256, self.error = sha256, error
            callbacks, self._callbacks = self._callbacks, []
            if not callbacks:
                self._done.set()
        while callbacks:
            for fn in callbacks if sha256 else ():
                try:
                    fn(sha256)
                except Exception:  # a listener's failure must not stop the hasher
                    log.exception("hash callback for %s failed", self.path)
            with self._lock:
                callbacks, self._callbacks = self._callbacks, []
                if not callbacks:
                    self._done.set()


class BackgroundHasher:
    """Hashes files into a HashCache on one background thread, in the order they were asked for. The thread
    runs while there is work and ends when the queue is empty; `stop` ends it for good (the engine is
    stopping) and joins it. A file already cached, queued or being hashed is not hashed twice."""

    def __init__(self, cache: HashCache, compute: Callable[..., str] = sha256_of_file):
        self.cache = cache
        self.compute = compute  # compute(path, on_read) -> hex digest; tests slow it down
        self._lock = threading.Lock()
        self._queue: collections.deque[HashTask] = collections.deque()
        self._tasks: dict[Path, HashTask] = {}  # queued or running, by path
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def submit(self, path: Path, on_done: Callable[[str], None] | None = None) -> HashTask:
        """The file's hash task: finished at once when the cache knows the hash, else queued (or the one
        already queued for it). `on_done(sha256)` is called when the hash is known."""
        path = Path(path).resolve()
        cached = self.cache.cached_sha256(path)
        if cached:
            task = HashTask.finished(path, cached)
        else:
            with self._lock:
                if self._stopped.is_set():
                    task = HashTask.finished(path, None, "the hasher has stopped")
                else:
                    task = self._tasks.get(path) or self._queue_task(path)
        if on_done is not None:
            task.add_done_callback(on_done)
        return task

    def _queue_task(self, path: Path) -> HashTask:
        """Queue a new task and make sure the thread runs (the lock is held)."""
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        task = HashTask(path, size)
        self._tasks[path] = task
        self._queue.append(task)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="hasher", daemon=True)
            self._thread.start()
        return task

    def pending(self, path: Path) -> HashTask | None:
        """The task queued or running for `path`, if any."""
        with self._lock:
            return self._tasks.get(Path(path).resolve())

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._stopped.is_set():
                    self._thread = None
                    return
                task = self._queue.popleft()
            try:
                self._hash(task)
            finally:
                with self._lock:
                    self._tasks.pop(task.path, None)

    def _hash(self, task: HashTask) -> None:
        bar = tqdm(total=task.size, desc=f"Calculating sha256 of {task.path.name}", unit="B", unit_scale=True,
                   unit_divisor=1024, disable=None, leave=False, delay=PROGRESS_AFTER_S)

        def on_read(n: int) -> None:
            if self._stopped.is_set():
                raise HashStopped()
            task.read += n
            bar.update(n)

        try:
            task._finish(self.cache.sha256(task.path, compute=self.compute, on_read=on_read))
            log.info("sha256 of %s: %s", task.path.name, task.sha256)
        except HashStopped:
            task._finish(None, "the hasher has stopped")
        except Exception as e:  # a file removed or unreadable: whoever waits learns there is no hash
            log.warning("Could not hash %s: %s", task.path, e)
            task._finish(None, str(e))
        finally:
            bar.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop for good: the file being hashed is left (within one block), queued ones are dropped (their
        waiters get None), and the thread is joined."""
        self._stopped.set()
        with self._lock:
            thread, dropped = self._thread, list(self._queue)
            self._queue.clear()
        for task in dropped:
            task._finish(None, "the hasher has stopped")
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
