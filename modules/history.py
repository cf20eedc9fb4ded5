"""The history index: every image the app saved (and any image later found in the output folders), in an
embedded SQLite database (`history.sqlite3` in the data folder) with the parsed infotext, the file's size and a
small thumbnail, searchable by prompt words (SQLite's FTS5) and by seed, model, LoRA, kind and date.

The database runs in WAL mode and every change is one transaction, so a process killed at any moment leaves it
whole. The image file is always written (atomically) before its row and deleted before its row is dropped; the
heal (`HistoryService.rescan`) adds files without a row and drops rows without a file, which is all a kill can
leave behind.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from modules import infotext

log = logging.getLogger(__name__)

KINDS = ("txt2img", "img2img", "extras", "grid")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".avif")
COPIED_SUFFIXES = (".png", ".webp", ".avif")  # the formats a large image's JPG copy is made beside
THUMB_SIDE = 128


def is_jpeg_copy(name: str, names: set[str]) -> bool:
    """Whether the file `name` among a folder's `names` is the JPG copy of a large image saved beside it
    (export_for_4chan: NAME.jpg beside NAME.png or .webp, .avif), which is not another picture."""
    stem, dot, ext = name.rpartition(".")
    return bool(dot) and ext.lower() == "jpg" and any(f"{stem}{other}" in names for other in COPIED_SUFFIXES)


def has_original(path: str) -> bool:
    """`is_jpeg_copy` for one file on disk."""
    base, ext = os.path.splitext(path)
    return ext.lower() == ".jpg" and any(os.path.isfile(base + other) for other in COPIED_SUFFIXES)

# The row's fields from the infotext, in the table's column order (after id, path, time, kind).
INFO_COLUMNS = ("prompt", "negative_prompt", "seed", "width", "height", "steps", "sampler", "schedule",
                "cfg_scale", "model", "model_hash", "loras", "vae", "denoising_strength", "hires", "infotext")
COLUMNS = ("id", "path", "time", "kind", *INFO_COLUMNS, "size", "mtime")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, time REAL NOT NULL, kind TEXT NOT NULL,
    prompt TEXT, negative_prompt TEXT, seed INTEGER, width INTEGER, height INTEGER, steps INTEGER, sampler TEXT,
    schedule TEXT, cfg_scale REAL, model TEXT COLLATE NOCASE, model_hash TEXT COLLATE NOCASE, loras TEXT, vae TEXT,
    denoising_strength REAL, hires TEXT, infotext TEXT, size INTEGER NOT NULL, mtime REAL NOT NULL);
CREATE INDEX IF NOT EXISTS images_time ON images (time DESC, id DESC);
CREATE INDEX IF NOT EXISTS images_seed ON images (seed);
CREATE INDEX IF NOT EXISTS images_model ON images (model);
CREATE INDEX IF NOT EXISTS images_model_hash ON images (model_hash);
CREATE TABLE IF NOT EXISTS image_loras (name TEXT NOT NULL COLLATE NOCASE, image_id INTEGER NOT NULL,
                                        PRIMARY KEY (name, image_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS image_loras_image ON image_loras (image_id);
CREATE TABLE IF NOT EXISTS thumbs (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""
SCHEMA_VERSION = 1  # PRAGMA user_version; an index of another version is rebuilt from the files
# Above this many matches a page is found by walking the time index (the matches are dense); below it the
# matches are found by their own index and sorted.
DENSE = 2000
INT64 = 1 << 63  # SQLite's integers are 64-bit; ids and seeds out of range match nothing


def fits(n: int) -> bool:
    return -INT64 <= n < INT64


_LORA_TAG = re.compile(r"<lora:([^:>]+)", re.IGNORECASE)


def _number(value: Any, kind: type) -> Any:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):
        return None


def fields_of(text: str | None) -> dict[str, Any]:
    """The indexed fields of an infotext (all None for an image without one)."""
    p = infotext.parse(text) if text else {}
    loras = [m.strip() for m in _LORA_TAG.findall(p.get("Prompt", ""))]
    for pair in str(p.get("Lora hashes", "") or "").split(","):
        name = pair.split(":")[0].strip()
        if name and name not in loras:
            loras.append(name)
    hires = None
    if p.get("Hires upscale") or p.get("Hires resize-1") or p.get("Hires upscaler"):
        size = f"{p['Hires upscale']}x" if p.get("Hires upscale") else p.get("Hires resize", "")
        hires = " ".join(x for x in (size, p.get("Hires upscaler", "")) if x) or "on"
    return {
        "prompt": p.get("Prompt") or None, "negative_prompt": p.get("Negative prompt") or None,
        "seed": _number(p.get("Seed"), int), "width": _number(p.get("Size-1"), int),
        "height": _number(p.get("Size-2"), int), "steps": _number(p.get("Steps"), int),
        "sampler": p.get("Sampler"), "schedule": p.get("Schedule type"),
        "cfg_scale": _number(p.get("CFG scale"), float),
        "model": p.get("Model"), "model_hash": p.get("Model hash"),
        "loras": "|" + "|".join(loras) + "|" if loras else None, "vae": p.get("VAE"),
        "denoising_strength": _number(p.get("Denoising strength"), float), "hires": hires, "infotext": text or None}


def thumbnail(image: Image.Image) -> bytes:
    """A small JPEG of `image` (its longer side THUMB_SIDE at most) for the history grid."""
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    if thumb.mode != "RGB":
        thumb = thumb.convert("RGB")
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=75)
    return buf.getvalue()


# --- queries -------------------------------------------------------------------------------------------

@dataclass
class Query:
    words: list[str] = field(default_factory=list)  # in the prompt or the negative prompt (all of them)
    seed: int | None = None
    model: str | None = None  # part of the model's name, or its hash
    lora: str | None = None
    kind: str | None = None
    since: float | None = None  # time >= since
    until: float | None = None  # time < until


def parse_time(text: str, end: bool = False) -> float:
    """A date (2026-12-05: its start, or with `end` the next day's start), a date and time (ISO 8601) or a
    Unix time, as a Unix time; ValueError otherwise."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        day = datetime.datetime.combine(datetime.date.fromisoformat(text), datetime.time())
        return (day + datetime.timedelta(days=1 if end else 0)).timestamp()
    return datetime.datetime.fromisoformat(text).timestamp()


def parse_query(text: str) -> Query:
    """A search box's text: words (in the prompt or negative prompt), `seed:123`, `model:NAME`, `lora:NAME`,
    `kind:txt2img|img2img|extras|grid`, `since:DATE`, `until:DATE` (inclusive). ValueError for a bad value."""
    q = Query()
    for token in re.findall(r'(?:\w+:)?"[^"]*"|\S+', text or ""):
        key, sep, value = token.partition(":")
        key = key.lower()
        value = value.strip('"')
        if sep and key == "seed":
            try:
                q.seed = int(value)
            except ValueError:
                raise ValueError(f"seed: {value!r} is not a number") from None
            if not fits(q.seed):
                raise ValueError(f"seed: {value} is out of range")
        elif sep and key in ("model", "lora"):
            setattr(q, key, value)
        elif sep and key == "kind":
            if value not in KINDS:
                raise ValueError(f"kind: {value!r} is not one of {', '.join(KINDS)}")
            q.kind = value
        elif sep and key in ("since", "until"):
            try:
                setattr(q, key, parse_time(value, end=key == "until"))
            except ValueError:
                raise ValueError(f"{key}: {value!r} is not a date (YYYY-MM-DD) or a time") from None
        else:
            q.words += re.findall(r"[^\W_]+", token)  # tokens as FTS5's unicode61 splits them
    return q


def _fts_text(words: list[str]) -> str:
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


# --- the index -----------------------------------------------------------------------------------------

class HistoryIndex:
    """The database: one connection shared by the threads that use it, one transaction at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:  # not a database (or not ours): set aside, the heal rebuilds it
            aside = self.path.with_name(f"{self.path.name}.broken-{int(datetime.datetime.now().timestamp())}")
            log.warning("History: %s cannot be read (%s); moved to %s, the index is rebuilt from the files",
                        self.path, e, aside.name)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            os.replace(self.path, aside)
            self._db = self._open()
        self.fts = self._make_fts()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode a crash loses at most the last commits
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION) or (version == 0 and db.execute(
                    "SELECT count(*) FROM sqlite_master").fetchone()[0]):
                log.warning("History: %s has another layout (version %d); it is rebuilt from the files",
                            self.path, version)
                for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table') "
                                          "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'images_fts_%'").fetchall():
                    db.execute(f'DROP TABLE IF EXISTS "{name}"')
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _make_fts(self) -> bool:
        try:
            # detail=none: the index holds which rows have a word, not where (single-word phrases only); its
            # lists of rows are a fraction of the size, which is what keeps a common word's search fast
            self._db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS images_fts USING fts5(prompt, negative_prompt, "
                             "detail=none)")
            return True
        except sqlite3.OperationalError as e:
            log.warning("History: this SQLite has no FTS5 (%s); prompt words are searched with LIKE", e)
            return False

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, path: Path, kind: str, text: str | None, *, time: float, size: int, mtime: float,
            thumb: bytes | None) -> int:
        """Index one image (or update its row when the path is known and the file changed); its id."""
        return self.add_many([(path, kind, text, time, size, mtime, thumb)])[0]

    def add_many(self, rows: list[tuple]) -> list[int]:
        """(path, kind, infotext, time, size, mtime, thumb) rows in one transaction; their ids."""
        ids = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for path, kind, text, time, size, mtime, thumb in rows:
                    ids.append(self._upsert(str(path), kind, fields_of(text), time, size, mtime, thumb))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ids

    def _upsert(self, path: str, kind: str, f: dict, time: float, size: int, mtime: float, thumb) -> int:
        values = [f[c] for c in INFO_COLUMNS]
        found = self._db.execute("SELECT id, mtime, size FROM images WHERE path = ?", (path,)).fetchone()
        if found and (found[1], found[2]) == (mtime, size):
            return found[0]  # the same file (a rescan that listed an image while it was being saved): as it is
        if found:
            row_id = found[0]
            sets = ", ".join(f"{c} = ?" for c in ("kind", *INFO_COLUMNS, "size", "mtime"))
            self._db.execute(f"UPDATE images SET {sets} WHERE id = ?", (kind, *values, size, mtime, row_id))
            self._drop_parts([row_id])
        else:
            cols = ("path", "time", "kind", *INFO_COLUMNS, "size", "mtime")
            cur = self._db.execute(f"INSERT INTO images ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                   (path, time, kind, *values, size, mtime))
            row_id = cur.lastrowid
        if self.fts:
            self._db.execute("INSERT INTO images_fts (rowid, prompt, negative_prompt) VALUES (?, ?, ?)",
                             (row_id, f["prompt"] or "", f["negative_prompt"] or ""))
        names = {n.lower(): n for n in (f["loras"] or "").split("|") if n}
        self._db.executemany("INSERT INTO image_loras (name, image_id) VALUES (?, ?)",
                             [(n, row_id) for n in names.values()])
        if thumb:
            self._db.execute("INSERT INTO thumbs (id, data) VALUES (?, ?)", (row_id, thumb))
        return row_id

    def _drop_parts(self, ids: list[int]) -> None:
        """The rows' words, LoRAs and thumbnails (in the caller's transaction)."""
        marks = ",".join("?" * len(ids))
        if self.fts:
            self._db.execute(f"DELETE FROM images_fts WHERE rowid IN ({marks})", ids)
        self._db.execute(f"DELETE FROM image_loras WHERE image_id IN ({marks})", ids)
        self._db.execute(f"DELETE FROM thumbs WHERE id IN ({marks})", ids)

    def remove(self, ids: list[int]) -> None:
        ids = [i for i in ids if fits(i)]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    marks = ",".join("?" * len(chunk))
                    self._db.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
                    self._drop_parts(chunk)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def known(self) -> dict[str, tuple[int, float, int]]:
        """{path: (id, mtime, size)} of every row."""
        with self._lock:
            return {p: (i, m, s) for i, p, m, s in self._db.execute("SELECT id, path, mtime, size FROM images")}

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM images").fetchone()[0]

    def get(self, row_id: int) -> dict[str, Any] | None:
        if not fits(row_id):
            return None
        with self._lock:
            cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM images WHERE id = ?", (row_id,))
            row = cur.fetchone()
        return dict(zip(COLUMNS, row)) if row else None

    def thumbs(self, ids: list[int]) -> dict[int, bytes]:
        ids = [i for i in ids if fits(i)]
        if not ids:
            return {}
        with self._lock:
            cur = self._db.execute(f"SELECT id, data FROM thumbs WHERE id IN ({','.join('?' * len(ids))})", ids)
            return {i: t for i, t in cur if t}

    def _where(self, q: Query) -> tuple[list[str], list]:
        conds, args = [], []
        if q.words and self.fts:
            conds.append("id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
            args.append(_fts_text(q.words))
        for word in q.words if not self.fts else ():
            conds.append("(prompt LIKE ? OR negative_prompt LIKE ?)")
            args += [f"%{word}%"] * 2
        if q.seed is not None:
            conds.append("seed = ?")
            args.append(q.seed)
        if q.model:  # a name or hash that starts so (NOCASE columns, so the indexes serve the ranges)
            conds.append("((model >= ? AND model < ?) OR (model_hash >= ? AND model_hash < ?))")
            args += [q.model, q.model + "\U0010ffff"] * 2
        if q.lora:
            conds.append("id IN (SELECT image_id FROM image_loras WHERE name = ?)")
            args.append(q.lora)
        for cond, value in (("kind = ?", q.kind), ("time >= ?", q.since), ("time < ?", q.until)):
            if value is not None:
                conds.append(cond)
                args.append(value)
        return conds, args

    def _count(self, q: Query, conds: list[str], args: list) -> int:
        if self.fts and q.words and len(conds) == 1:  # words alone: FTS5 counts its own rows
            return self._db.execute("SELECT count(*) FROM images_fts WHERE images_fts MATCH ?", args).fetchone()[0]
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return self._db.execute(f"SELECT count(*) FROM images{where}", args).fetchone()[0]

    def search(self, q: Query, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """(the rows that match, newest first, `limit` from `offset`; how many match in all). Many matches: the
        page is found walking the time index; few: they are looked up by their own index and sorted."""
        conds, args = self._where(q)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        limit, offset = max(0, min(limit, INT64 - 1)), max(0, min(offset, INT64 - 1))
        with self._lock:
            total = self._count(q, conds, args)
            hint = " INDEXED BY images_time" if total > DENSE else ""
            page = f"SELECT id FROM images{hint}{where} ORDER BY time DESC, id DESC LIMIT ? OFFSET ?"
            cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM images WHERE id IN ({page}) "
                                   "ORDER BY time DESC, id DESC", [*args, limit, offset])  # whole rows: the page's
            rows = [dict(zip(COLUMNS, r)) for r in cur]
        return rows, total

    def integrity(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]
