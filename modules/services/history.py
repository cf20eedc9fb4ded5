"""History: the index of saved images (modules/history.py) as the page and the API use it: recording each
saved image, searching, one image's file, deleting, and the heal (a background rescan of the output folders
that indexes files added by hand and drops rows whose file is gone).

Clients name images by their integer id only; a file is read or deleted only when it lies inside the output
folders (the settings' image and grid folders and `outputs/` in the data folder), after links are followed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from modules import history, images
from modules.history import HistoryIndex, Query
from modules.limits import Limits
from modules.paths import Paths
from modules.services.errors import BadRequest
from modules.services.options import OptionsService

log = logging.getLogger(__name__)

# Settings naming the folders images are saved in, and the kind of image each holds (None: any kind).
KIND_FOLDERS = (("outdir_txt2img_samples", "txt2img"), ("outdir_img2img_samples", "img2img"),
                ("outdir_extras_samples", "extras"), ("outdir_txt2img_grids", "grid"), ("outdir_img2img_grids", "grid"),
                ("outdir_samples", None), ("outdir_grids", "grid"))
BATCH = 200  # rows written per transaction by the rescan


def _remove(path: Path) -> None:
    try:
        from send2trash import send2trash  # optional: the OS trash
    except ImportError:
        path.unlink()
    else:
        send2trash(str(path))


@dataclass
class ScanStatus:
    running: bool = False
    scanned: int = 0  # image files found in the output folders
    to_read: int = 0  # of them, new or changed
    read: int = 0
    added: int = 0
    removed: int = 0
    skipped: int = 0  # unreadable files, and images without generation parameters
    started: float | None = None
    finished: float | None = None
    error: str | None = None


class HistoryService:
    def __init__(self, index: HistoryIndex, paths: Paths, options: OptionsService, max_pixels: int | None = None):
        self.index = index
        self._paths = paths
        self._options = options
        self._max_pixels = max_pixels or Limits().max_input_pixels
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._status = ScanStatus()
        self._unreadable: dict[str, tuple[float, int]] = {}  # path: (mtime, size) when it was skipped

    # --- folders -------------------------------------------------------------------------------------
    def roots(self) -> list[Path]:
        """The output folders (real paths, none inside another)."""
        values = self._options.values
        found = {Path(os.path.realpath(self._paths.outputs))}
        for setting, _ in KIND_FOLDERS:
            folder = getattr(values, setting)
            if folder:
                found.add(Path(os.path.realpath(self._paths.resolve_output_dir(folder))))
        return [r for r in found if not any(o != r and r.is_relative_to(o) for o in found)]

    def _inside(self, path: str | Path) -> Path | None:
        real = Path(os.path.realpath(path))
        return real if any(real.is_relative_to(r) for r in self.roots()) else None

    def relative(self, path: str | Path) -> str:
        """The path shown to clients: relative to outputs/ (or to the output folder it is in)."""
        path = Path(path)
        for root in (self._paths.outputs, *self.roots()):
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return path.name

    def kind_of(self, path: Path, text: str | None) -> str:
        """The kind of a file found in the output folders: its folder's, else guessed from name and infotext."""
        values = self._options.values
        best, kind = -1, None
        for setting, folder_kind in KIND_FOLDERS:
            folder = getattr(values, setting)
            root = Path(os.path.realpath(self._paths.resolve_output_dir(folder))) if folder else None
            if root is not None and folder_kind and path.is_relative_to(root) and len(root.parts) > best:
                best, kind = len(root.parts), folder_kind
        if kind:
            return kind
        if path.name.startswith("grid"):
            return "grid"
        if text and "Denoising strength" in text and "Hires" not in text:
            return "img2img"
        return "txt2img"

    # --- recording --------------------------------------------------------------------------------------
    def saved(self, path: Path, kind: str, text: str | None, image: Image.Image) -> None:
        """Index an image just written (atomically) to `path`. A failure is logged, not raised: the image is
        saved, and the next rescan indexes it."""
        try:
            st = os.stat(path)
            self.index.add(Path(os.path.realpath(path)), kind, text, time=time.time(), size=st.st_size,
                           mtime=st.st_mtime, thumb=history.thumbnail(image))
        except Exception as e:  # noqa: BLE001  (the job's image is saved whatever happens to its row)
            log.warning("History: could not index %s (%s); the next rescan will", path, e)

    # --- searching -----------------------------------------------------------------------------------
    def search(self, text: str = "", *, model: str | None = None, seed: int | None = None, lora: str | None = None,
               kind: str | None = None, since: str | None = None, until: str | None = None, limit: int = 50,
               offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """(rows newest first, total matching) for a search box's text plus explicit filters; BadRequest for
        a value that cannot be read."""
        try:
            for value in (text, model, lora, kind, since, until):
                (value or "").encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
            if seed is not None and not history.fits(seed):
                raise ValueError(f"seed: {seed} is out of range")
            q: Query = history.parse_query(text)
            q.model = model or q.model
            q.seed = seed if seed is not None else q.seed
            q.lora = lora or q.lora
            if kind:
                q.kind = history.parse_query(f"kind:{kind}").kind
            q.since = history.parse_time(since) if since else q.since
            q.until = history.parse_time(until, end=True) if until else q.until
        except ValueError as e:
            raise BadRequest(f"history search: {e}") from None
        return self.index.search(q, max(1, min(limit, 500)), max(0, offset))

    def get(self, row_id: int) -> dict[str, Any] | None:
        return self.index.get(row_id)

    def thumbnails(self, ids: list[int]) -> dict[int, bytes]:
        return self.index.thumbs(ids)

    def file(self, row_id: int) -> Path | None:
        """The image file of a row, when it exists inside the output folders."""
        row = self.index.get(row_id)
        if row is None:
            return None
        real = self._inside(row["path"])
        return real if real is not None and real.is_file() else None

    def delete(self, row_id: int) -> bool:
        """Delete an image: its file, the .txt beside it and its JPG copy (export_for_4chan) (to the OS trash when
        send2trash is installed), then its row. False when there is no such row. A file outside the output folders
        is left alone (the row goes)."""
        row = self.index.get(row_id)
        if row is None:
            return False
        real = self._inside(row["path"])
        if real is not None and real.is_file():
            beside = [real.with_suffix(".txt")]  # its infotext, when save_txt wrote one
            if real.suffix.lower() in history.COPIED_SUFFIXES:  # a large image's JPG copy would be listed next
                beside.append(real.with_suffix(".jpg"))
            for target in [real] + [b for b in beside if b.is_file()]:
                _remove(target)
        self.index.remove([row_id])
        return True

    @staticmethod
    def trash_available() -> bool:
        try:
            import send2trash  # noqa: F401
        except ImportError:
            return False
        return True

    # --- the heal ------------------------------------------------------------------------------------
    def status(self) -> ScanStatus:
        with self._lock:
            return ScanStatus(**vars(self._status))

    def rescan(self) -> ScanStatus:
        """Start the heal in the background (unless it runs already, or the service has stopped); its status."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._status = ScanStatus(running=True, started=time.time())
                self._thread = threading.Thread(target=self._scan, name="history-scan", daemon=True)
                self._thread.start()
            return ScanStatus(**vars(self._status))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running rescan; whether none runs now."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.status().running

    def stop(self) -> None:
        """Stop a running rescan and join it (the engine is stopping); no later rescan starts."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()
        self.index.close()

    def _scan(self) -> None:
        try:
            self._heal()
        except Exception as e:  # noqa: BLE001  (reported in the status; the app goes on)
            log.warning("History: the rescan failed: %s", e)
            with self._lock:
                self._status.error = str(e)
        finally:
            with self._lock:
                self._status.running, self._status.finished = False, time.time()
                self._thread = None

    def _files(self) -> dict[str, os.stat_result]:
        """Every image file in the output folders (hidden and temporary files left out), by real path. The saved
        init images (save_init_img) are inputs, not results: their folder is left out."""
        found: dict[str, os.stat_result] = {}
        inputs = os.path.realpath(self._paths.resolve_output_dir(self._options.values.outdir_init_images))
        for root in self.roots():
            for folder, dirs, names in os.walk(root):
                if self._stop.is_set():
                    return found
                dirs[:] = [d for d in dirs if not d.startswith(".")
                           and os.path.realpath(os.path.join(folder, d)) != inputs]
                present = set(names)
                for name in names:
                    if name.startswith(".") or not name.lower().endswith(history.IMAGE_SUFFIXES) \
                            or history.is_jpeg_copy(name, present):
                        continue
                    path = os.path.join(folder, name)
                    try:
                        found[path] = os.stat(path)
                    except OSError:
                        pass
        return found

    def _heal(self) -> None:
        known = self.index.known()
        files = self._files()
        # gone: files no longer there, and JPG copies an earlier scan listed (see history.is_jpeg_copy)
        gone = [i for p, (i, _, _) in known.items()
                if p not in files and (not os.path.isfile(p) or history.has_original(p))]
        if gone and not self._stop.is_set():
            self.index.remove(gone)
        todo = [p for p, st in files.items()
                if (known.get(p, (0, None, None))[1:] != (st.st_mtime, st.st_size))
                and self._unreadable.get(p) != (st.st_mtime, st.st_size)]
        with self._lock:
            self._status.scanned, self._status.to_read, self._status.removed = len(files), len(todo), len(gone)
        rows: list[tuple] = []
        for path in tqdm(todo, desc="History: indexing", unit="file", disable=None, leave=False):
            if self._stop.is_set():
                break
            row = self._read(path, files[path])
            if row is not None:
                rows.append(row)
            if len(rows) >= BATCH:
                self._write(rows)
                rows = []
        if rows and not self._stop.is_set():
            self._write(rows)
        log.info("History: %d images in the output folders; %d indexed, %d dropped, %d skipped", len(files),
                 self._status.added, len(gone), self._status.skipped)

    def _write(self, rows: list[tuple]) -> None:
        self.index.add_many(rows)
        with self._lock:
            self._status.added += len(rows)

    def _read(self, path: str, st: os.stat_result) -> tuple | None:
        """(path, kind, infotext, time, size, mtime, thumb) of a file, or None (warned) when it cannot be read or
        is foreign: an image without generation parameters (neither ours nor A1111's)."""
        with self._lock:
            self._status.read += 1
        try:
            with images.open_image(path, self._max_pixels) as im:
                text, items = images.read_info(images.load(im))
                text = text or (items.get("extras") if isinstance(items.get("extras"), str) else None)
                if not text:
                    raise ValueError("no generation parameters in it (not made by this program or by A1111's WebUI)")
                thumb = history.thumbnail(im)
        except Exception as e:  # noqa: BLE001  (one bad file never stops the scan)
            log.warning("History: skipped %s: %s", path, e)
            self._unreadable[path] = (st.st_mtime, st.st_size)
            with self._lock:
                self._status.skipped += 1
            return None
        return path, self.kind_of(Path(path), text), text, st.st_mtime, st.st_size, st.st_mtime, thumb
